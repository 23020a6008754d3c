//! The admin token and the device-token signing secret: taken from the configuration,
//! or generated on first start and kept in the data directory (mode 0600).

use std::io::Write;
use std::path::Path;

use rand::RngCore;

/// A random URL-safe secret of 32 bytes, hex-encoded.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

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

/// SHA-256 of an API key, hex: what the store keeps instead of the key.
pub fn hash_key(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
