//! What machine the figures were measured on.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub rustc: String,
}

impl Machine {
    pub fn one_line(&self) -> String {
        format!(
            "machine: {} × {}, {:.1} GiB, Linux {}, {}",
            self.cpus, self.model, self.memory_gib, self.kernel, self.rustc
        )
    }
}

pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = meminfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(
            || "rustc unknown".into(),
            |out| String::from_utf8_lossy(&out.stdout).trim().to_string(),
        );
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        model,
        memory_gib: memory_kib as f64 / (1024.0 * 1024.0),
        kernel,
        rustc,
    }
}

/// The 1-minute load average: other work on the machine competes with the
/// benchmark for its cores, so the report says how busy it was.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
