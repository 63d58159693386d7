//! The fuzz target's check (`tests/common/check.rs`, shared with `codec/fuzz`), run by plain
//! cargo so CI exercises it without cargo-fuzz: over every recorded fixture, every single
//! packet of them, the fuzzer's minimised corpus and crash inputs saved under
//! `codec/fuzz/regressions/`, and a few thousand deterministic pseudo-random mutations of them.

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use common::check::{check, Stats};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn read_dir_bins(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str());
            p.is_file() && !matches!(ext, Some("md" | "py" | "sh"))
        })
        .map(|p| (p.display().to_string(), fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    read_dir_bins(&dir)
}

/// Splits a recorded stream into its packets by the fixed header alone.
fn split_packets(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        i += 1;
        let (mut len, mut shift) = (0usize, 0);
        while let Some(&b) = bytes.get(i) {
            i += 1;
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        i = (i + len).min(bytes.len());
        out.push(bytes[start..i].to_vec());
    }
    out
}

fn run(label: &str, data: &[u8]) -> Stats {
    match catch_unwind(AssertUnwindSafe(|| check(data))) {
        Ok(stats) => stats,
        Err(_) => panic!("fuzz check failed on {label}: {data:02x?}"),
    }
}

fn mutate(rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let n = d.len();
        match rng.below(9) {
            0 if n > 0 => d[rng.below(n)] ^= 1 << rng.below(8),
            1 if n > 0 => d[rng.below(n)] = rng.next() as u8,
            2 => d.insert(rng.below(n + 1), rng.next() as u8),
            3 if n > 0 => {
                d.remove(rng.below(n));
            }
            4 if n > 0 => d.truncate(rng.below(n)),
            // Interesting values: 0, 0x7F, 0x80, 0xFF, and the property/reason bytes.
            5 if n > 0 => {
                let v = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, 0x26, 0x0B, 0x23, 0x04][rng.below(10)];
                d[rng.below(n)] = v;
            }
            // The first byte: another packet type / flag combination.
            6 if n > 0 => d[0] = rng.next() as u8,
            // Splice a packet from elsewhere in.
            7 => {
                let other = &pool[rng.below(pool.len())];
                let at = rng.below(n + 1);
                d.splice(at..at, other.iter().copied());
            }
            // Remaining length off by a little.
            _ if n > 1 => d[1] = d[1].wrapping_add(rng.next() as u8 % 5).wrapping_sub(2),
            _ => {}
        }
    }
    d
}

#[test]
fn fixtures_and_their_packets() {
    let mut total = Stats::default();
    for (name, bytes) in fixtures() {
        total.add(run(&name, &bytes));
        for (i, p) in split_packets(&bytes).iter().enumerate() {
            total.add(run(&format!("{name}[{i}]"), p));
        }
    }
    assert!(total.exact > 0, "{total:?}");
}

/// The fuzzer's minimised corpus (`cargo fuzz cmin`) and any input that once failed, saved
/// under `codec/fuzz/regressions/`. An empty or missing folder fails: the test would check
/// nothing.
#[test]
fn saved_fuzzer_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let inputs = read_dir_bins(&dir);
    assert!(!inputs.is_empty(), "no saved fuzzer inputs in {}", dir.display());
    let mut total = Stats::default();
    for (name, bytes) in &inputs {
        total.add(run(name, bytes));
    }
    // A corpus the fuzzer kept reaches both outcomes; if not, it is not that corpus.
    assert!(total.errors > 0 && total.packets > 0, "{} inputs: {total:?}", inputs.len());
    eprintln!("{} saved fuzzer inputs: {total:?}", inputs.len());
}

#[test]
fn deterministic_mutations() {
    let mut pool = Vec::new();
    for (_, bytes) in fixtures() {
        pool.push(bytes.clone());
        pool.extend(split_packets(&bytes));
    }
    let mut rng = Rng(0x005E_ED0F_5AA7_D00D);
    let mut total = Stats::default();
    let iterations = 6000;
    for i in 0..iterations {
        let base = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, base, &pool);
        total.add(run(&format!("mutation #{i}"), &input));
    }
    // The mutations must reach both outcomes, or they test nothing.
    assert!(total.errors > 0 && total.packets > 0, "{total:?}");
    eprintln!("{iterations} mutations: {total:?}");
}
