//! The permissions of what the log writes: its files hold message payloads, so directories
//! are created 0700 and files 0600, whatever the process's umask (a umask can only remove
//! bits, so these never come out looser). Existing directories keep their mode; start-up
//! warns when the data directory is open to others (`io::persist::prepare_data_dir`).

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Mode of every directory the broker creates under (and including) the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the broker creates in the data directory.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with [`DIR_MODE`]; an existing `dir` is fine.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Group and other permission bits of `path` (0 when private).
pub fn open_to_others(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o077)
}
