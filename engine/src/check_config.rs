//! `shardmq check-config FILE [FLAGS…]`: checks a configuration without starting the broker.
//!
//! Parses the file (and any flags given after it) exactly as start-up would, then loads what
//! a reload loads (`reload::build_reload`), the HTTP token file and the cluster's link TLS
//! files. The first problem is one
//! line naming the key (or file) and the reason; the binary exits non-zero on it. It does not
//! bind ports or probe the machine (io_uring, locked memory): start-up does that.

use std::ffi::OsString;

use crate::config::Config;

/// Checks the configuration named by `args` (`[FILE, FLAGS…]`, without the program name and
/// the `check-config` word). `Ok` holds a one-line summary.
pub fn run(args: &[OsString]) -> Result<String, String> {
    let Some(file) = args.first() else {
        return Err("usage: shardmq check-config FILE [FLAGS…]".into());
    };
    let mut argv: Vec<OsString> = vec!["shardmq".into(), "--config".into(), file.clone()];
    argv.extend(args[1..].iter().cloned());
    let config = Config::try_parse_from(argv).map_err(|e| e.to_string())?;
    let (_, errors) = crate::reload::build_reload(&config);
    if let Some(e) = errors.first() {
        return Err(e.clone());
    }
    crate::http::HttpFiles::load(
        config.ops.http_token_file.as_deref(),
        config.ops.http_tls.as_ref(),
    )?;
    if let Some(files) = config.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
        crate::cluster::tls::NodeTls::load(files)?;
    }
    Ok(format!(
        "{}: ok ({} shards, {} listeners, {}{})",
        std::path::Path::new(file).display(),
        config.shards,
        config.listen.len(),
        config.ops.http.map_or("no HTTP listener".into(), |a| format!(
            "HTTP on {}://{a}",
            config.ops.http_scheme()
        )),
        config.cluster.as_ref().map_or(String::new(), |c| format!(
            ", cluster node {} on {} with {} seeds",
            c.node_id.0,
            c.listen,
            c.seeds.len()
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<String, String> {
        let dir = std::env::temp_dir().join(format!("shardmq-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("c{}.toml", text.len()));
        std::fs::write(&file, text).unwrap();
        let r = run(&[file.clone().into_os_string(), "--no-pin".into()]);
        std::fs::remove_file(&file).unwrap();
        r
    }

    #[test]
    fn a_good_file_passes_and_a_bad_one_names_the_key() {
        let ok = check("shards = 2\nhttp = \"127.0.0.1:8080\"\n").unwrap();
        assert!(ok.contains("2 shards") && ok.contains("HTTP on http://127.0.0.1:8080"), "{ok}");
        let e = check("shards = 2\n[limits]\ninflight_out_max = 0\n").unwrap_err();
        assert!(e.contains("inflight_out_max"), "{e}");
        let e = check("log_level = \"loud\"\n").unwrap_err();
        assert!(e.contains("log_level") && e.contains("loud"), "{e}");
        let e =
            check("http = \"127.0.0.1:1\"\nhttp_token_file = \"/nonexistent/t\"\n").unwrap_err();
        assert!(e.contains("--http-token-file /nonexistent/t"), "{e}");
        let e = check("bogus = 1\n").unwrap_err();
        assert!(e.contains("bogus") && e.contains("line 1"), "{e}");
        assert!(run(&[]).unwrap_err().contains("usage"));
        let ok = check(
            "[cluster]\nnode_id = 3\nlisten = \"127.0.0.1:7000\"\nseeds = [\"127.0.0.2:7000\"]\n",
        )
        .unwrap();
        assert!(ok.contains("cluster node 3 on 127.0.0.1:7000 with 1 seeds"), "{ok}");
        let e = check("[cluster]\nnode_id = 64\nlisten = \"127.0.0.1:7000\"\n").unwrap_err();
        assert!(e.contains("cluster.node_id 64"), "{e}");
        let e = check(
            "[cluster]\nnode_id = 3\nlisten = \"127.0.0.1:7000\"\ntls_cert = \"/nonexistent/n.pem\"\n\
             tls_key = \"/nonexistent/n.key\"\ntls_ca = \"/nonexistent/ca.pem\"\n",
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/n.pem"), "the link TLS files are read: {e}");
    }
}
