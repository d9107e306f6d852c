//! Atomic writes: a temporary file beside the target, flushed, then renamed over it,
//! so a reader never sees a half-written file and an interrupted write leaves the old
//! one in place.

use crate::{Error, Result};
use std::io::Write;
use std::path::Path;

fn split(path: &Path) -> Result<(&Path, String)> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{} is not a file path", path.display())))?;
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// Removes the temporary files of writes to `dir/name` whose process is gone (killed
/// mid-write, say by a file-size limit): `.NAME.tmp.PID` with no live PID. "Live" is
/// judged in this process's PID namespace (`/proc/PID`): a writer in another container
/// sharing the directory looks dead, so directories shared across PID namespaces should
/// not be written concurrently.
fn remove_stale(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // Where there is no /proc to ask, assume alive (leave the file).
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Fails now, naming `path`, if a file cannot be written there later (an unwritable or
/// missing directory): long runs check their outputs before they start working.
pub fn check_writable(path: &Path) -> Result<()> {
    let (dir, name) = split(path)?;
    if path.is_dir() {
        return Err(Error::invalid(format!("{} is a directory: give a file path", path.display())));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(path, e))?;
    let probe = dir.join(format!(".{name}.probe.{}", std::process::id()));
    // create_new: never follow a planted symlink or truncate someone else's file.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| Error::io(path, e))?;
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
}

/// Writes `bytes` to `path` atomically: `.NAME.tmp.PID` beside it, synced, renamed over it
/// (the directory created if missing; stale temporary files of dead writers removed).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_stale(dir, &name);
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        // A leftover of an earlier process with our PID goes; then create_new, which
        // never follows a planted symlink.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}
