//! Private files: the permission check before reading, and atomic writes with mode 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::Error;

/// Largest key file or keyring that is read, in bytes (16 MiB: a keyring of about 100 000
/// entries). Anything larger is refused before it is read into memory.
pub const MAX_FILE_LEN: u64 = 16 * 1024 * 1024;

/// Refuses `path` if users other than its owner may access it: on Unix, if any of the mode bits
/// `0o077` is set. The error names the mode and the fix (`chmod 600`). On other systems it only
/// checks that the file exists.
pub fn check_private(path: &Path) -> Result<(), Error> {
    let metadata = fs::metadata(path).map_err(|e| Error::io(path, "inspect", e))?;
    check_file(path, &metadata)?;
    check_mode(path, &metadata)
}

/// A directory (or a socket, a device) is no key file: say so before its mode is blamed.
fn check_file(path: &Path, metadata: &fs::Metadata) -> Result<(), Error> {
    if metadata.is_file() { Ok(()) } else { Err(Error::NotAFile { path: path.to_path_buf() }) }
}

#[cfg(unix)]
fn check_mode(path: &Path, metadata: &fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::Permissions { path: path.to_path_buf(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _metadata: &fs::Metadata) -> Result<(), Error> {
    Ok(())
}

/// Reads a private file: opens it, checks the permissions of what was opened (so a file swapped
/// in between cannot slip past the check), refuses files over [`MAX_FILE_LEN`], and returns the
/// bytes in a buffer that is wiped when dropped.
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let metadata = file.metadata().map_err(|e| Error::io(path, "inspect", e))?;
    check_file(path, &metadata)?;
    check_mode(path, &metadata)?;
    if metadata.len() > MAX_FILE_LEN {
        return Err(Error::TooLarge { path: path.to_path_buf() });
    }
    // Sized up front so the buffer holding the secret never reallocates (leaving a copy behind);
    // `take` keeps a file that grows while being read within the limit.
    let capacity = usize::try_from(metadata.len()).unwrap_or(0).saturating_add(1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, "read", e))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(Error::TooLarge { path: path.to_path_buf() });
    }
    Ok(bytes)
}

/// Writes `contents` to `path` atomically with mode `0600`: after a crash at any moment `path`
/// holds either its old contents or the new ones, never a mix or nothing.
///
/// How: a new temporary file in the same directory (created with mode `0600`), write, `fsync`,
/// then rename it over `path` (or, without `overwrite`, hard-link it to `path`, which fails if
/// `path` exists, so a file created meanwhile is not clobbered either), then `fsync` the
/// directory so the new name itself is durable. The temporary file is removed on every error
/// path; after a crash it may be left behind as `.<name>.tmp-<random>`, and is harmless.
///
/// Without `overwrite`, an existing `path` is [`Error::FileExists`]. Key files and keyrings are
/// written with it, and so is ledtemp-rpi's sequence-number file.
pub fn write_private_file(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), Error> {
    let Some(name) = path.file_name() else {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a file name");
        return Err(Error::io(path, "write", e));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !overwrite && fs::symlink_metadata(path).is_ok() {
        return Err(Error::FileExists { path: path.to_path_buf() });
    }
    let (temp_path, mut temp) = create_temp(dir, name)?;
    let result = (|| {
        temp.write_all(contents).map_err(|e| Error::io(&temp_path, "write", e))?;
        temp.sync_all().map_err(|e| Error::io(&temp_path, "sync", e))?;
        drop(temp);
        if overwrite {
            fs::rename(&temp_path, path).map_err(|e| Error::io(path, "replace", e))?;
        } else {
            fs::hard_link(&temp_path, path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Error::FileExists { path: path.to_path_buf() },
                _ => Error::io(path, "create", e),
            })?;
            fs::remove_file(&temp_path).map_err(|e| Error::io(&temp_path, "remove", e))?;
        }
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: the temporary file is garbage now, and may already be gone.
        let _ = fs::remove_file(&temp_path);
    }
    result
}

/// Creates `.<name>.tmp-<random>` in `dir`, mode 0600, failing rather than reusing a leftover.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> Result<(PathBuf, File), Error> {
    let mut attempts = 0;
    loop {
        let suffix = getrandom::u64().map_err(Error::Random)?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{suffix:016x}"));
        let temp_path = dir.join(temp_name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&temp_path) {
            Ok(file) => return Ok((temp_path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(Error::io(&temp_path, "create", e)),
        }
    }
}

/// Makes a rename or link in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, "sync directory", e))
}

/// Directories cannot be opened for syncing here; the rename is as durable as the system makes it.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_with_mode_0600_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        write_private_file(&path, b"one", false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn overwrite_only_when_asked_and_tightens_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(write_private_file(&path, b"new", false), Err(Error::FileExists { .. })));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        write_private_file(&path, b"new", true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("a.key");
        let err = write_private_file(&path, b"x", true).unwrap_err();
        assert!(matches!(err, Error::Io { action: "create", .. }), "{err:?}");
    }

    #[test]
    fn read_refuses_open_files_and_oversize() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_FILE_LEN + 1).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(read_private(&path), Err(Error::TooLarge { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read_private(&path), Err(Error::Permissions { mode: 0o640, .. })));
    }
}
