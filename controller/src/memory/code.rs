//! Gives back the pages of edgemq's own executable that are mapped but idle.
//!
//! The kernel maps a file's pages in windows around each one a process touches (64 KB
//! on x86-64 and arm64). Starting up and every reload (reading the folder, validating,
//! planning, setting up TLS) run code spread over hundreds of such windows, and those
//! pages stay mapped: an idle `edgemq run` on the bundled example kept 14 of the
//! binary's 28 MB of code resident, most of its 22 MB RSS, though nothing ran that
//! code again until the next reload. A container's working set counts them too.
//!
//! [`Code::tick`] unmaps the executable's read-only mappings (its code and constants)
//! with `madvise(MADV_DONTNEED)` when the process is quiet and has mapped more of them
//! since it last did so. Only a mapping that holds no private copy of a page is
//! unmapped (`Anonymous: 0 kB` in `/proc/self/smaps`: nothing wrote to it, so each of
//! its pages is the file's own); the relocated read-only data, which the loader wrote,
//! is left alone. The pages stay in the kernel's page cache: the next use of one maps it
//! again (a minor fault), and only what runs again comes back.

/// Growth of the process's file-backed resident memory (kB) since it last unmapped its
/// code, above which a quiet tick unmaps it again: a few of the kernel's windows are
/// not worth the faults that bring back what a steady load uses.
pub const REGROWTH_KB: u64 = 2048;

/// When to unmap: at the first quiet moment, then whenever quiet after the mapped
/// file pages grew by [`REGROWTH_KB`].
#[derive(Debug, Default)]
pub struct Code {
    /// File-backed resident kB right after the last unmapping.
    floor: Option<u64>,
}

impl Code {
    /// A tick in which the process was `quiet`: unmaps the executable's idle pages if
    /// it is time to. Returns the kB of file-backed memory given back.
    pub fn tick(&mut self, quiet: bool) -> Option<u64> {
        if !quiet {
            return None;
        }
        let before = rss_file_kb()?;
        if !self.due(before) {
            return None;
        }
        let exe = std::fs::read_link("/proc/self/exe").ok()?;
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        for (start, end) in idle_mappings(&smaps, &exe.to_string_lossy()) {
            imp::unmap(start, end - start);
        }
        let after = rss_file_kb()?;
        self.floor = Some(after);
        Some(before.saturating_sub(after))
    }

    fn due(&self, file_kb: u64) -> bool {
        self.floor
            .is_none_or(|floor| file_kb >= floor.saturating_add(REGROWTH_KB))
    }
}

/// The process's file-backed resident memory in kB (`RssFile` of `/proc/self/status`).
fn rss_file_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssFile:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The address ranges in `smaps` of the mappings of `exe` that are not writable and
/// hold no private (anonymous) page.
fn idle_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The current mapping, when it is one of the executable's read-only ones.
    let mut current = None;
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                let perms = parts.next().unwrap_or_default();
                // Offset, device and inode come before the path, which may hold spaces.
                let path = parts.skip(3).collect::<Vec<_>>().join(" ");
                current = (path == exe && !perms.contains('w')).then_some((a, b));
                continue;
            }
        }
        if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if parts.next() == Some("0") {
                    out.push(range);
                }
            }
        }
    }
    out
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod imp {
    pub fn unmap(start: usize, len: usize) {
        // SAFETY: the range is a whole read-only mapping of our own executable with no
        // private page in it (see `idle_mappings`): every page is the file's, nothing
        // could have written it, so after MADV_DONTNEED each access maps the same bytes
        // from the page cache again. No memory is freed that anything points into.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if r != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not give back the executable's idle pages"
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn unmap(_start: usize, _len: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0200000 r--p 00000000 fe:00 42 /opt/edge mq/edgemq
Size:               2048 kB
Rss:                 900 kB
Anonymous:             0 kB
55d0a0200000-55d0a1000000 r-xp 00200000 fe:00 42 /opt/edge mq/edgemq
Size:              14336 kB
Anonymous:             0 kB
55d0a1000000-55d0a1100000 r--p 01000000 fe:00 42 /opt/edge mq/edgemq
Anonymous:           700 kB
55d0a1100000-55d0a1110000 rw-p 01100000 fe:00 42 /opt/edge mq/edgemq
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 7 /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
";

    #[test]
    fn only_the_executables_read_only_mappings_without_private_pages_are_unmapped() {
        assert_eq!(
            idle_mappings(SMAPS, "/opt/edge mq/edgemq"),
            [
                (0x55d0a0000000, 0x55d0a0200000),
                (0x55d0a0200000, 0x55d0a1000000)
            ],
            "code and constants; not the relocated data the loader wrote, the \
             writable data, a library or the heap"
        );
        assert!(idle_mappings(SMAPS, "/usr/bin/other").is_empty());
    }

    #[test]
    fn unmapping_is_due_at_the_first_quiet_moment_then_after_regrowth() {
        let mut c = Code::default();
        assert!(c.due(100));
        c.floor = Some(6000);
        assert!(!c.due(6000 + REGROWTH_KB - 1));
        assert!(c.due(6000 + REGROWTH_KB));
        assert_eq!(Code::default().tick(false), None, "never while busy");
    }

    #[test]
    fn this_process_gives_back_its_idle_code_and_keeps_running_it() {
        // The test binary's own code: the first quiet tick gives pages back, and the
        // code goes on running (the assertion below is that code).
        let mut c = Code::default();
        let given = c.tick(true).expect("Linux /proc");
        assert!(given > 0, "gave back {given} kB");
        assert!(c.floor.is_some_and(|f| f > 0));
    }
}
