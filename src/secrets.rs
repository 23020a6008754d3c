//! The admin token and the device-token signing secret: taken from the configuration,
//! or generated on first start and kept in the data directory (mode 0600).

use std::io::Write;
use std::path::Path;

use credentials::random_secret;

/// The secret in `file` under `dir`, generated if missing. Returns it and whether it
/// was generated now.
pub fn load_or_create(dir: &Path, file: &str) -> std::io::Result<(String, bool)> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let secret = random_secret();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&path)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    Ok((secret, true))
}
