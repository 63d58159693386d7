//! The machine's CPU topology as `shardmq-bench tune` needs it: which CPUs this process may
//! use, which of them are SMT siblings of one core, the NUMA nodes, and which CPUs take the
//! network card's interrupts. Read from Linux's `/sys` and `/proc`; anything missing (a
//! container hiding `/sys/devices/system/node`, no NIC lines in `/proc/interrupts`) is
//! simply empty, and `tune` says so.

use std::fs;

/// What `tune` knows about the CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// CPUs this process may run on (its affinity mask), sorted.
    pub allowed: Vec<usize>,
    /// Physical cores: the allowed CPUs grouped by SMT siblings, each group sorted, groups
    /// ordered by their first CPU. Without SMT every group has one CPU.
    pub cores: Vec<Vec<usize>>,
    /// NUMA nodes: the allowed CPUs of each node (empty when `/sys` does not say).
    pub numa_nodes: Vec<Vec<usize>>,
    /// Interrupts of network devices per CPU (CPU, count), only CPUs with some.
    pub nic_irqs: Vec<(usize, u64)>,
}

impl Topology {
    /// Reads this machine's topology.
    pub fn read() -> Topology {
        let allowed = crate::sys::allowed_cpus();
        let siblings = |cpu: usize| {
            fs::read_to_string(format!(
                "/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
            ))
            .ok()
            .and_then(|s| crate::sys::parse_cpu_list(s.trim()).ok())
            .unwrap_or_else(|| vec![cpu])
        };
        let cores = group_cores(&allowed, siblings);
        let numa_nodes = read_numa(&allowed);
        let nic_irqs = fs::read_to_string("/proc/interrupts")
            .map(|t| nic_irqs_from(&t, &allowed))
            .unwrap_or_default();
        Topology { allowed, cores, numa_nodes, nic_irqs }
    }

    /// Whether any core has more than one allowed hardware thread.
    pub fn has_smt(&self) -> bool {
        self.cores.iter().any(|c| c.len() > 1)
    }

    /// CPUs that take at least a tenth of the NIC's interrupts (where a shard would compete
    /// with the softirq work of the network stack).
    pub fn irq_heavy(&self) -> Vec<usize> {
        let total: u64 = self.nic_irqs.iter().map(|&(_, n)| n).sum();
        if total == 0 {
            return Vec::new();
        }
        self.nic_irqs.iter().filter(|&&(_, n)| n * 10 >= total).map(|&(c, _)| c).collect()
    }

    /// A few lines for humans.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "CPUs usable: {} ({} cores{})\n",
            crate::sys::format_cpu_list(&self.allowed),
            self.cores.len(),
            if self.has_smt() { ", SMT" } else { ", no SMT siblings" }
        );
        if self.has_smt() {
            let groups: Vec<String> =
                self.cores.iter().map(|c| crate::sys::format_cpu_list(c)).collect();
            s.push_str(&format!("SMT siblings: {}\n", groups.join(" | ")));
        }
        match self.numa_nodes.len() {
            0 => s.push_str("NUMA: not reported by /sys (treated as one node)\n"),
            n => {
                let nodes: Vec<String> =
                    self.numa_nodes.iter().map(|c| crate::sys::format_cpu_list(c)).collect();
                s.push_str(&format!("NUMA nodes: {n} ({})\n", nodes.join(" | ")));
            }
        }
        if self.nic_irqs.is_empty() {
            s.push_str(
                "NIC interrupts: none found in /proc/interrupts (loopback benchmarks take none)\n",
            );
        } else {
            let irqs: Vec<String> =
                self.nic_irqs.iter().map(|(c, n)| format!("CPU{c}: {n}")).collect();
            s.push_str(&format!("NIC interrupts: {}\n", irqs.join(", ")));
        }
        s
    }
}

/// Groups `allowed` CPUs into cores using `siblings(cpu)` (the CPU's thread_siblings_list).
pub fn group_cores(allowed: &[usize], siblings: impl Fn(usize) -> Vec<usize>) -> Vec<Vec<usize>> {
    let mut cores: Vec<Vec<usize>> = Vec::new();
    for &cpu in allowed {
        if cores.iter().any(|c| c.contains(&cpu)) {
            continue;
        }
        let mut group: Vec<usize> =
            siblings(cpu).into_iter().filter(|c| allowed.contains(c)).collect();
        if !group.contains(&cpu) {
            group.push(cpu);
        }
        group.sort_unstable();
        group.dedup();
        cores.push(group);
    }
    cores.sort_by_key(|c| c[0]);
    cores
}

fn read_numa(allowed: &[usize]) -> Vec<Vec<usize>> {
    let Ok(dir) = fs::read_dir("/sys/devices/system/node") else { return Vec::new() };
    let mut nodes: Vec<(usize, Vec<usize>)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id: usize = name.strip_prefix("node")?.parse().ok()?;
            let list = fs::read_to_string(e.path().join("cpulist")).ok()?;
            let cpus: Vec<usize> = crate::sys::parse_cpu_list(list.trim())
                .ok()?
                .into_iter()
                .filter(|c| allowed.contains(c))
                .collect();
            (!cpus.is_empty()).then_some((id, cpus))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, c)| c).collect()
}

/// Names of network devices' interrupt lines (the last column of `/proc/interrupts`):
/// interface names (`eth0`, `ens5`, `enp3s0f1-TxRx-0`, ...) and drivers' queue names, matched
/// at the start of the name so that e.g. `acpi-ged` or `i8042` are not taken for NICs.
fn is_nic_line(name: &str) -> bool {
    const PREFIXES: [&str; 11] =
        ["eth", "ens", "enp", "eno", "enx", "wlan", "wlp", "mlx", "ixgbe", "i40e", "bnxt"];
    let lower = name.to_ascii_lowercase();
    // virtio lines are NICs only for their input/output queues (not block devices).
    if lower.starts_with("virtio") {
        return lower.contains("-input") || lower.contains("-output");
    }
    let iface = PREFIXES.iter().any(|p| {
        lower.strip_prefix(p).is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_digit() || c == 'p' || c == 's')
        })
    });
    iface || lower.starts_with("ice-") || lower.contains("-txrx-")
}

/// NIC interrupt counts per allowed CPU from the text of `/proc/interrupts`.
pub fn nic_irqs_from(text: &str, allowed: &[usize]) -> Vec<(usize, u64)> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let cpus: Vec<Option<usize>> = header
        .split_whitespace()
        .map(|c| c.strip_prefix("CPU").and_then(|n| n.parse().ok()))
        .collect();
    let mut counts = vec![0u64; cpus.len()];
    for line in lines {
        let mut fields = line.split_whitespace();
        let Some(irq) = fields.next() else { continue };
        if !irq.trim_end_matches(':').chars().all(|c| c.is_ascii_digit()) {
            continue; // NMI, LOC, ... : not device interrupts.
        }
        let rest: Vec<&str> = fields.collect();
        if rest.len() <= cpus.len() || !is_nic_line(rest[rest.len() - 1]) {
            continue;
        }
        for (i, n) in rest[..cpus.len()].iter().enumerate() {
            counts[i] += n.parse::<u64>().unwrap_or(0);
        }
    }
    cpus.into_iter()
        .zip(counts)
        .filter_map(|(cpu, n)| Some((cpu?, n)))
        .filter(|&(cpu, n)| n > 0 && allowed.contains(&cpu))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smt_siblings_group_into_cores() {
        // 4 cores x 2 threads, Intel numbering (siblings n and n+4); CPU 7 not allowed.
        let allowed = [0, 1, 2, 3, 4, 5, 6];
        let cores = group_cores(&allowed, |c| vec![c % 4, c % 4 + 4]);
        assert_eq!(cores, vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3]]);
        let t = Topology { allowed: allowed.to_vec(), cores, ..Topology::default() };
        assert!(t.has_smt());
        let flat = group_cores(&[0, 1], |c| vec![c]);
        assert_eq!(flat, vec![vec![0], vec![1]]);
    }

    #[test]
    fn nic_interrupts_are_found() {
        let text = "           CPU0       CPU1       CPU2\n\
          0:         44          0          0   IO-APIC   2-edge      timer\n\
         24:     900000         10          0   PCI-MSI 49153-edge      virtio0-input.0\n\
         25:          0     200000          0   PCI-MSI 49154-edge      virtio0-output.0\n\
         26:          5          0          0   PCI-MSI 49155-edge      virtio1-req.0\n\
         30:          0          0       7000   PCI-MSI 52428-edge      eth1-TxRx-0\n\
        NMI:          0          0          0   Non-maskable interrupts\n";
        assert!(!is_nic_line("acpi-ged") && !is_nic_line("i8042") && !is_nic_line("virtio1-req.0"));
        assert!(is_nic_line("ens5") && is_nic_line("enp3s0f1-TxRx-0") && is_nic_line("mlx5_comp3"));
        let irqs = nic_irqs_from(text, &[0, 1, 2]);
        assert_eq!(irqs, vec![(0, 900_000), (1, 200_010), (2, 7000)]);
        let t = Topology { allowed: vec![0, 1, 2], nic_irqs: irqs, ..Topology::default() };
        assert_eq!(t.irq_heavy(), vec![0, 1]);
        // A CPU the process may not use is left out.
        assert_eq!(nic_irqs_from(text, &[1]), vec![(1, 200_010)]);
    }
}
