//! The config file as read: the config parsed from its bytes, and the SHA-256 digest of
//! those same bytes (`hash` in `GET /config` and in a reload's answer). The digest depends on
//! the file alone, so two builds, or two hosts, report the same `hash` for the same file.

use std::fmt;
use std::path::Path;

use sha2::{Digest as _, Sha256};
use switchback_config::{Config, ConfigError};

/// A config and the digest that names it.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// The config, validated.
    pub(crate) config: Config,
    /// The SHA-256 of the file it was parsed from.
    pub(crate) digest: Digest,
}

impl Loaded {
    /// A config that comes from no file (the built-in demo): the digest is that of its JSON
    /// form, which is as stable as the config's fields.
    pub(crate) fn built_in(config: Config) -> Self {
        let json = serde_json::to_vec(&config).unwrap_or_default();
        Self {
            digest: Digest::of(&json),
            config,
        }
    }
}

/// Reads the file at `path` once, and parses and validates what was read: the digest is of
/// exactly the bytes the config came from. Errors are [`Config::load`]'s.
pub(crate) fn load(path: &Path) -> Result<Loaded, Vec<ConfigError>> {
    let file = path.display().to_string();
    let text = std::fs::read(path).and_then(|bytes| {
        // `read_to_string`'s error, as `Config::load` reports it.
        String::from_utf8(bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    });
    match text {
        Ok(text) => Ok(Loaded {
            config: Config::from_yaml_str(&text, &file)?,
            digest: Digest::of(text.as_bytes()),
        }),
        Err(e) => Err(vec![ConfigError::unreadable(file, &e)]),
    }
}

/// The SHA-256 of a config file's bytes, shown as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_in_hex() {
        // FIPS 180-2's "abc" example.
        assert_eq!(
            Digest::of(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            serde_json::to_string(&Digest::of(b"")).unwrap(),
            "\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\""
        );
    }

    #[test]
    fn loads_a_file_with_the_digest_of_its_bytes() {
        let dir = std::env::temp_dir().join(format!("switchback-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        let yaml = "routes: [{ match: { prefix: / }, cluster: c }]\nclusters: [{ name: c, endpoints: [127.0.0.1:1] }]\n";
        std::fs::write(&path, yaml).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.digest, Digest::of(yaml.as_bytes()));
        assert_eq!(loaded.config, Config::load(&path).unwrap());

        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert_eq!(
            load(&path).unwrap_err(),
            Config::load(&path).unwrap_err(),
            "not UTF-8"
        );
        let missing = dir.join("missing.yaml");
        assert_eq!(load(&missing).unwrap_err(), Config::load(&missing).unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
