//! Gives back to the system the memory that glibc's malloc keeps after a burst.
//!
//! glibc returns freed memory to the kernel only from the top of each heap. After a
//! burst (a queue of 100,000 messages drained, a thousand objects reconciled) most of
//! the heap is free but stays resident, split by the few allocations still alive
//! above it, and in the arenas of threads that are now idle. `malloc_trim(0)` walks
//! every arena and hands whole free pages back (`madvise(MADV_DONTNEED)`); live
//! allocations are untouched.
//!
//! Every long-running command runs [`give_back`]: every ten seconds it asks malloc how
//! much it holds free (`mallinfo2`), and trims only when that is above a threshold,
//! so a steady load does not pay page faults for memory it is about to reuse.
//!
//! These are the crate's only two calls that the compiler cannot check
//! (`unsafe`): two glibc functions that take no pointers from us, return plain
//! numbers, and take malloc's own locks. Elsewhere than glibc they do nothing.

use std::time::Duration;

/// How often the held memory is looked at. `mallinfo2` walks malloc's free lists,
/// which after a burst hold tens of thousands of chunks: every 2 s that showed as
/// 0.1 % of a core in an idle controller; every 10 s it does not show.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Free memory held by malloc above which it is handed back.
pub const THRESHOLD: usize = 8 << 20;

/// Memory malloc holds that no allocation uses, in bytes (`mallinfo2().fordblks`:
/// free chunks of every arena, the top of each heap included). `None` where the
/// allocator cannot tell.
pub fn held_free() -> Option<usize> {
    imp::held_free()
}

/// Hands every whole free page that malloc holds back to the system. Returns whether
/// any memory was given back.
pub fn trim() -> bool {
    imp::trim()
}

/// Runs forever: every `every`, trims when malloc holds more than `above` bytes free.
/// Spawn it on the command's runtime.
pub async fn give_back(every: Duration, above: usize) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(before) = held_free() else {
            return; // not glibc: nothing to do, ever
        };
        if before <= above {
            continue;
        }
        let returned = trim();
        tracing::debug!(
            free_before = before,
            free_after = held_free().unwrap_or(0),
            returned,
            "gave freed memory back to the system"
        );
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod imp {
    pub fn held_free() -> Option<usize> {
        // SAFETY: mallinfo2 takes no arguments and returns a struct by value; glibc
        // takes each arena's lock while it counts.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }

    pub fn trim() -> bool {
        // SAFETY: malloc_trim takes a plain number and reads no memory of ours; glibc
        // takes each arena's lock while it trims, and live allocations stay as they are.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn held_free() -> Option<usize> {
        None
    }

    pub fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_anon_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_freed_burst_is_given_back() {
        // 64 MB in 64 KB blocks (below malloc's mmap threshold, so they come from a
        // heap), written to so that they are resident; then all freed but the last,
        // which keeps the freed ones from being the top of the heap (glibc gives
        // the top back by itself).
        let mut blocks: Vec<Vec<u8>> = (0..1024)
            .map(|i| vec![1 + (i % 200) as u8; 64 << 10])
            .collect();
        let keep = blocks.pop().unwrap();
        drop(blocks);
        let held = held_free().expect("glibc");
        assert!(
            held > 32 << 20,
            "the freed burst is held by malloc: {held} bytes"
        );
        let before = rss_anon_kb();
        assert!(trim(), "malloc_trim gave nothing back");
        let after = rss_anon_kb();
        assert!(
            before.saturating_sub(after) > 32 << 10,
            "RssAnon {before} kB before the trim, {after} kB after"
        );
        assert!(
            keep.iter().all(|&b| b == 1 + (1023 % 200) as u8),
            "the live block is intact"
        );
    }
}
