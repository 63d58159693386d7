//! CPU lists (`0,2,4-7`), as `--cpus` and `taskset` write them. Dependency-free: the bench
//! harness compiles this same file (`#[path]`), so there is one parser for both binaries.

/// Parses a CPU list such as `0,2,4-7` into sorted, distinct CPU numbers.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    if s.trim().is_empty() {
        return Err("empty CPU list".into());
    }
    for part in s.split(',') {
        let part = part.trim();
        let num = |t: &str| -> Result<usize, String> {
            t.trim().parse::<usize>().map_err(|_| format!("`{t}` is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range `{part}` is reversed"));
                }
                if b - a >= 4096 {
                    return Err(format!("range `{part}` is too large"));
                }
                cpus.extend(a..=b);
            }
            None if part.is_empty() => return Err("empty item in CPU list".into()),
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2,4-7").unwrap(), vec![0, 2, 4, 5, 6, 7]);
        assert_eq!(parse_cpu_list(" 3 , 1-2,1").unwrap(), vec![1, 2, 3]);
        assert!(parse_cpu_list("").unwrap_err().contains("empty"));
        assert!(parse_cpu_list("1,,2").unwrap_err().contains("empty item"));
        assert!(parse_cpu_list("5-2").unwrap_err().contains("reversed"));
        assert!(parse_cpu_list("a").unwrap_err().contains("`a` is not a CPU number"));
        assert!(parse_cpu_list("1-x").unwrap_err().contains("`x`"));
    }
}
