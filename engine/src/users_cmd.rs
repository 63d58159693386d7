//! `shardmq users …`: edits a users file (the format is in `core/auth/users.rs`).
//!
//! ```text
//! echo 'secret' | shardmq users add alice --file users.txt [--iterations 4096]
//! shardmq users remove alice --file users.txt
//! ```
//!
//! The password is the first line of standard input (so it never appears in the process
//! list or the shell history); only its salted, iterated SCRAM-SHA-256 credential is written.
//! Other lines (comments, other users) are kept as they are. The file is replaced atomically
//! and created with mode 0600.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::core::auth::users::{
    check_user_name, Credential, UserDb, ITERATIONS_DEFAULT, ITERATIONS_MAX, ITERATIONS_MIN,
    PLAIN_ITERATIONS_MAX, SALT_LEN_BYTES,
};

/// shardmq users: manage the users file.
#[derive(Debug, Parser)]
#[command(name = "shardmq users")]
struct UsersCli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Adds a user, or replaces its password; the password is read from standard input.
    Add {
        /// The user name (no whitespace).
        name: String,
        /// The users file (created if missing).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// PBKDF2 iterations. Past 65536 the user can log in with SCRAM-SHA-256 only (the
        /// broker checks plain passwords on its own cores).
        #[arg(long, default_value_t = ITERATIONS_DEFAULT)]
        iterations: u32,
    },
    /// Removes a user.
    Remove {
        /// The user name.
        name: String,
        /// The users file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs `shardmq users …` with `args` (the first item is the program name, then `users`).
pub fn run(args: Vec<std::ffi::OsString>) -> Result<(), String> {
    let args = args.into_iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, a)| a);
    let cli = UsersCli::try_parse_from(args).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Add { name, file, iterations } => {
            check_user_name(&name)?;
            if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
                return Err(format!(
                    "--iterations {iterations}: must be between {ITERATIONS_MIN} and {ITERATIONS_MAX}"
                ));
            }
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .map_err(|e| format!("reading the password from standard input: {e}"))?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err("empty password (give it on standard input)".into());
            }
            let mut salt = [0u8; SALT_LEN_BYTES];
            getrandom::getrandom(&mut salt).map_err(|e| format!("random salt: {e}"))?;
            if iterations > PLAIN_ITERATIONS_MAX {
                eprintln!(
                    "shardmq users: warning: more than {PLAIN_ITERATIONS_MAX} iterations: \
                     `{name}` can log in with SCRAM-SHA-256 only"
                );
            }
            let cred = Credential::derive(password.as_bytes(), &salt, iterations);
            let text = read_existing(&file)?;
            write_file(&file, &edit(&text, &name, Some(&UserDb::line(&name, &cred))))?;
            println!("{}: user `{name}` set", file.display());
        }
        Command::Remove { name, file } => {
            let text = read_existing(&file)?;
            let edited = edit(&text, &name, None);
            if edited == text {
                return Err(format!("{}: no user `{name}`", file.display()));
            }
            write_file(&file, &edited)?;
            println!("{}: user `{name}` removed", file.display());
        }
    }
    Ok(())
}

/// The file's text ("" if it does not exist); it must parse.
fn read_existing(path: &Path) -> Result<String, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    UserDb::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}

/// `text` with `name`'s line replaced by `line` (appended if absent; removed if `None`).
fn edit(text: &str, name: &str, line: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut placed = false;
    for l in text.lines() {
        let is_user = l.trim_start().split(char::is_whitespace).next() == Some(name)
            && !l.trim_start().starts_with('#');
        if is_user {
            if let (Some(new), false) = (line, placed) {
                out.push_str(new);
                out.push('\n');
                placed = true;
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if let (Some(new), false) = (line, placed) {
        out.push_str(new);
        out.push('\n');
    }
    out
}

/// Replaces `path` with `text` atomically (a temporary file renamed over it), mode 0600.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::edit;

    #[test]
    fn edit_replaces_appends_and_removes_keeping_other_lines() {
        let text = "# users\nalice A\nbob B\n";
        assert_eq!(edit(text, "alice", Some("alice X")), "# users\nalice X\nbob B\n");
        assert_eq!(edit(text, "carol", Some("carol C")), "# users\nalice A\nbob B\ncarol C\n");
        assert_eq!(edit(text, "bob", None), "# users\nalice A\n");
        assert_eq!(edit("# alice\n", "alice", None), "# alice\n", "comments stay");
        assert_eq!(edit("", "a", Some("a 1")), "a 1\n");
    }
}
