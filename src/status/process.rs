//! The standard process series (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`, `process_virtual_memory_bytes`, `process_threads`), read
//! from `/proc/self` on every scrape (the boot time and the open-file limit once), as the
//! Prometheus client libraries report them. prometheus-client has no such collector and
//! the maintained ones are for other metric crates, so this is a small one of our own.
//! Linux only; elsewhere it reports nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What `/proc/self` says now.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub threads: f64,
    pub start_time_seconds: f64,
    pub open_fds: f64,
    pub max_fds: f64,
}

/// Clock ticks per second and the page size: what Linux reports on every platform it
/// runs here (`getconf CLK_TCK` is 100; x86-64 and arm64 Debian kernels use 4 KiB
/// pages), asked without libc since unsafe code is forbidden.
const TICKS: f64 = 100.0;
const PAGE: f64 = 4096.0;

impl ProcessStats {
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name is in parentheses and may hold spaces: fields follow its end.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let fixed = Fixed::get()?;
        Some(ProcessStats {
            // Fields 14 and 15: user and system time, in clock ticks.
            cpu_seconds: (field(14)? + field(15)?) / TICKS,
            resident_bytes: field(24)? * PAGE,
            virtual_bytes: field(23)?,
            threads: field(20)?,
            start_time_seconds: fixed.boot_time + field(22)? / TICKS,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as f64,
            max_fds: fixed.max_fds,
        })
    }
}

/// What does not change while the process runs, read at the first scrape: the boot
/// time (from `/proc/stat`, whose per-CPU and per-interrupt lines make it the costliest
/// file a scrape read) and the open-file limit (`/proc/self/limits`; a `prlimit` on the
/// running process shows at its restart).
#[derive(Clone, Copy)]
struct Fixed {
    boot_time: f64,
    max_fds: f64,
}

impl Fixed {
    fn get() -> Option<Fixed> {
        static FIXED: std::sync::OnceLock<Option<Fixed>> = std::sync::OnceLock::new();
        *FIXED.get_or_init(|| {
            let boot_time = std::fs::read_to_string("/proc/stat")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
            let max_fds = std::fs::read_to_string("/proc/self/limits")
                .ok()?
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
                .unwrap_or(f64::INFINITY);
            Some(Fixed { boot_time, max_fds })
        })
    }
}

#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                s.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                s.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                s.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                s.threads,
            ),
        ] {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_itself() {
        let s = ProcessStats::read().expect("/proc/self");
        assert!(s.resident_bytes > 1e6, "{s:?}");
        assert!(s.open_fds >= 3.0 && s.max_fds >= s.open_fds, "{s:?}");
        assert!(s.threads >= 1.0, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0,
            "{s:?}"
        );
    }
}
