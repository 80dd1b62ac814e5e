//! Gives back to the system the memory that glibc's malloc keeps after a burst.
//!
//! glibc returns freed memory to the kernel only from the top of each heap. After a
//! burst (a queue of 100,000 messages drained, a thousand objects reconciled) most of
//! the heap is free but stays resident, split by the few allocations still alive
//! above it, and in the arenas of threads that are now idle. `malloc_trim(0)` walks
//! every arena and hands whole free pages back (`madvise(MADV_DONTNEED)`); live
//! allocations are untouched.
//!
//! Every long-running command runs [`give_back`]. It reads the process's CPU time
//! once a second (`/proc/self/stat`); after a second with work in it, it asks malloc
//! how much it holds free (`mallinfo2`) as soon as a quiet second follows (the burst
//! is over), and every ten seconds while the work goes on. It trims only when that
//! is above a threshold, so a steady load does not pay page faults for memory it is
//! about to reuse. A process with nothing to do never walks malloc's free lists.
//!
//! At the same ticks, a quiet one also gives back the pages of edgemq's own code that
//! start-up and reloads mapped and nothing runs now ([`code`]).
//!
//! These are the crate's only three calls that the compiler cannot check (`unsafe`):
//! two glibc functions that take no pointers from us, return plain numbers, and take
//! malloc's own locks (elsewhere than glibc they do nothing), and the `madvise` of
//! [`code`], which its text explains.

use std::time::Duration;

pub mod code;

/// How often the held memory is looked at while the process keeps working.
/// `mallinfo2` walks malloc's free lists, which after a burst hold tens of thousands
/// of chunks: every 2 s that showed as 0.1 % of a core in a controller; every 10 s it
/// does not show.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// How often the process's CPU time is read, to tell when a burst is over.
const TICK: Duration = Duration::from_secs(1);

/// CPU time in one [`TICK`] below which the process counts as quiet: one or two of
/// the kernel's 10 ms ticks (a broker answering pings, a controller's watch events).
const QUIET: Duration = Duration::from_millis(20);

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

/// Runs forever: trims when malloc holds more than `above` bytes free, looked at
/// when a busy spell ends and every `every` while it lasts (see the module's text).
/// Spawn it on the command's runtime.
pub async fn give_back(every: Duration, above: usize) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pace = Pace::new(every);
    let mut code = code::Code::default();
    let mut cpu = process_cpu();
    loop {
        tick.tick().await;
        let now = process_cpu();
        // Where the CPU time cannot be read, every tick counts as busy: the held
        // memory is then looked at every `every`, as before this pacing.
        let used = match (cpu, now) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::MAX,
        };
        cpu = now;
        if let Some(kb) = code.tick(used < QUIET) {
            tracing::debug!(kb, "gave the executable's idle pages back");
        }
        if !pace.tick(used, TICK) {
            continue;
        }
        let Some(before) = held_free() else {
            continue; // not glibc: no malloc to trim (the code pages above still count)
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

/// When to look at the held memory, from the CPU time each tick used: once when a
/// busy spell ends, every `every` while it lasts, never while nothing happens.
#[derive(Debug)]
struct Pace {
    every: Duration,
    /// Some tick since the last look had work in it.
    busy: bool,
    since_look: Duration,
}

impl Pace {
    fn new(every: Duration) -> Pace {
        Pace {
            every,
            busy: false,
            since_look: Duration::ZERO,
        }
    }

    /// A tick of length `tick` in which the process used `used` of CPU time: whether
    /// to look now.
    fn tick(&mut self, used: Duration, tick: Duration) -> bool {
        self.since_look += tick;
        let quiet = used < QUIET;
        self.busy |= !quiet;
        let look = self.busy && (quiet || self.since_look >= self.every);
        if look {
            self.since_look = Duration::ZERO;
            self.busy = !quiet;
        }
        look
    }
}

/// The CPU time (user and system) of this process so far, from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) in parentheses:
    // state is the first, utime the 12th and stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, which Linux fixes at 100 for this file on every architecture.
    Some(Duration::from_millis(ticks * 10))
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

    const BUSY: Duration = Duration::from_millis(300);
    const IDLE: Duration = Duration::ZERO;

    fn looks(pace: &mut Pace, ticks: &[Duration]) -> Vec<bool> {
        ticks.iter().map(|u| pace.tick(*u, TICK)).collect()
    }

    #[test]
    fn a_process_with_nothing_to_do_never_looks() {
        let mut pace = Pace::new(INTERVAL);
        assert!(looks(&mut pace, &[IDLE; 60]).iter().all(|l| !l));
    }

    #[test]
    fn the_end_of_a_burst_is_looked_at_once_at_the_first_quiet_tick() {
        let mut pace = Pace::new(INTERVAL);
        let mut ticks = vec![BUSY; 3];
        ticks.extend([IDLE; 20]);
        let got = looks(&mut pace, &ticks);
        let at: Vec<usize> = (0..got.len()).filter(|i| got[*i]).collect();
        assert_eq!(at, vec![3], "{got:?}");
    }

    #[test]
    fn a_steady_load_is_looked_at_every_interval() {
        let mut pace = Pace::new(Duration::from_secs(10));
        let got = looks(&mut pace, &[BUSY; 35]);
        let at: Vec<usize> = (0..got.len()).filter(|i| got[*i]).collect();
        // The 10th, 20th and 30th second.
        assert_eq!(at, vec![9, 19, 29], "{got:?}");
    }

    #[test]
    fn this_process_cpu_time_is_read_and_grows_with_work() {
        let before = process_cpu().expect("/proc/self/stat");
        // Work until the reading has grown by 50 ms (on a loaded machine this thread
        // may get only part of the wall time), for at most 10 s.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while start.elapsed() < Duration::from_secs(10)
            && after < before + Duration::from_millis(50)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = process_cpu().unwrap();
        }
        assert!(
            after >= before + Duration::from_millis(50),
            "{before:?} -> {after:?}"
        );
    }

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
