//! Files that survive crashes and keep secrets: atomic writes and private directories.
//!
//! Every file the program writes goes through [`write_atomic`]: the content goes to a
//! temporary file in the same directory, which is flushed to disk and then renamed over the
//! target, and the directory itself is flushed so the rename survives a power cut. A reader
//! (or the program after a crash) therefore sees the old file or the new one, never half of
//! one. [`write_new_atomic`] does the same for a file that must never be replaced (a key that
//! other files are encrypted under). Files are created with the mode asked for from the start
//! (no window in which a secret is readable by others).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of every file we write: readable by the owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every directory we create: usable by the owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Replace `path` with `contents` atomically, creating it with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, temp) = write_temp(path, contents, mode)?;
    let result = fs::rename(&temp, path).and_then(|()| File::open(&dir)?.sync_all());
    if result.is_err() {
        // Best effort: the temporary file is garbage either way.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Create `path` with `contents` atomically, as [`write_atomic`] does, but never replace an
/// existing file: if `path` exists (even as a dangling symlink) this fails with
/// [`io::ErrorKind::AlreadyExists`] and changes nothing. The complete temporary file is
/// hard-linked to `path` (link(2) refuses an existing name, where rename(2) would replace it),
/// so two writers racing for the same name cannot both win.
pub fn write_new_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, temp) = write_temp(path, contents, mode)?;
    let result = fs::hard_link(&temp, path);
    // The temporary name goes in every case: on success `path` holds the file.
    let _ = fs::remove_file(&temp);
    result?;
    File::open(dir)?.sync_all()
}

/// `contents`, written and synced to a fresh temporary file with `mode` beside `path`.
/// Returns the directory and the temporary file's path.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> io::Result<(PathBuf, PathBuf)> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let temp = temp_path(&dir, path);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok((dir, temp)),
        Err(err) => {
            let _ = fs::remove_file(&temp);
            Err(err)
        }
    }
}

/// The largest file of ours (config.toml, state.json, a peer file, a key in text) read: far
/// above any real one, so that a file grown absurd (a mistake, a full disk's garbage) is
/// refused with an error instead of filling memory.
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;

/// The whole of `path`, at most [`MAX_READ_BYTES`]; a larger file is
/// [`io::ErrorKind::InvalidData`] ("larger than ...").
pub fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_READ_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_READ_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_READ_BYTES / (1024 * 1024)),
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read_bounded(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Create `path` and any missing parents with mode 0700. Existing directories are left as
/// they are.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
}

/// A fresh name beside `target` that no concurrent writer in this process or another uses.
fn temp_path(dir: &Path, target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rb-fsutil-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        create_private_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_replace_the_whole_file_with_the_asked_mode() {
        let dir = scratch("replace");
        let path = dir.join("state.json");
        write_atomic(&path, b"first version, longer", PRIVATE_FILE_MODE).unwrap();
        write_atomic(&path, b"second", PRIVATE_FILE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = scratch("fail");
        let path = dir.join("keep");
        write_atomic(&path, b"old", PRIVATE_FILE_MODE).unwrap();
        // Renaming over a directory fails; the old content must survive.
        let blocked = dir.join("blocked");
        create_private_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_atomic(&blocked, b"new", PRIVATE_FILE_MODE).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_file_is_written_once_and_never_replaced() {
        let dir = scratch("new");
        let path = dir.join("kek");
        write_new_atomic(&path, b"first", PRIVATE_FILE_MODE).unwrap();
        let err = write_new_atomic(&path, b"second", PRIVATE_FILE_MODE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary files are left behind, after success or refusal.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_dirs_are_0700() {
        let dir = scratch("dirs");
        let nested = dir.join("a/b");
        create_private_dir(&nested).unwrap();
        assert_eq!(
            fs::metadata(&nested).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![b'a'; MAX_READ_BYTES as usize]).unwrap();
        assert_eq!(
            read_bounded_string(&path).unwrap().len(),
            MAX_READ_BYTES as usize
        );
        fs::write(&path, vec![b'a'; MAX_READ_BYTES as usize + 1]).unwrap();
        let err = read_bounded(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "larger than 4 MiB");
        fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_bounded_string(&path).unwrap_err().to_string(),
            "not UTF-8 text"
        );
    }
}
