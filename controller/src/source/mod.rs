//! Where the standalone mode's configuration comes from: a folder on disk, followed
//! even when it is swapped atomically ([`watch`]), or a git repository followed
//! safely (signed commits only, fast-forward only, atomic switch) into such a folder
//! ([`git`] runs the `git` command, [`decide`] is the pure policy, [`follow`] ties
//! them together).
//!
//! ```text
//!  remote ──fetch──► bare mirror ──verify + decide──► fresh tree ──symlink swap──►
//!   (git)            (state/git/mirror.git)  (pure)   (state/git/trees/<commit>)
//!                                                         │
//!  folder (--config, or state/git/current/<path>) ◄───────┘
//!     │ watch (inotify + re-resolve)
//!     ▼
//!  standalone reload (load, validate, plan, apply)
//! ```

pub mod decide;
pub mod follow;
pub mod git;
pub mod watch;
