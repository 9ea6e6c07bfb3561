//! age encryption of whole archives (`[encryption] recipients`).
//!
//! An encrypted archive is the ordinary compressed archive sealed as one age stream
//! (`NAME.tar.gz.age`), so the standard `age -d` turns it back into the file Juju and `tar` read.
//! The daemon holds only public recipients; decrypting needs an identity file that the operator
//! passes to `verify`, `show` and `restore` (`--identity FILE`).
//!
//! Owns: parsing recipients, loading identities, wrapping a writer and a reader. Never logs or
//! returns key material: errors name the identity file, never its contents.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// First bytes of every binary age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";
/// File name suffix of an encrypted archive.
pub const SUFFIX: &str = ".age";

/// Public keys an archive is encrypted to (age X25519, `age1...`).
#[derive(Clone, Default)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    /// Parses `age1...` strings; the error names the first bad entry by position.
    pub fn parse(list: &[String]) -> Result<Recipients, String> {
        let mut out = Vec::with_capacity(list.len());
        for (i, r) in list.iter().enumerate() {
            let parsed = age::x25519::Recipient::from_str(r.trim()).map_err(|e| {
                format!(
                    "entry {} is not an age X25519 recipient (age1...): {e}",
                    i + 1
                )
            })?;
            out.push(parsed);
        }
        Ok(Recipients(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Starts an age stream to these recipients on `out`; `finish` on the result seals it.
    pub fn seal<W: Write>(&self, out: W) -> io::Result<age::stream::StreamWriter<W>> {
        let encryptor =
            age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
                .map_err(io::Error::other)?;
        encryptor.wrap_output(out)
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| r.to_string()))
            .finish()
    }
}

/// Private keys read from an age identity file (`AGE-SECRET-KEY-1...` lines, `#` comments), as
/// `age-keygen` writes it.
pub struct Identities {
    path: PathBuf,
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Identities({}: {} keys)",
            self.path.display(),
            self.keys.len()
        )
    }
}

impl Identities {
    pub fn load(path: &Path) -> Result<Identities, String> {
        let shown = path.display();
        let file = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
            // age's own message names the file and the line, never the line's text.
            .map_err(|e| format!("cannot read identity file {shown}: {e}"))?;
        let keys = file
            .into_identities()
            .map_err(|e| format!("identity file {shown}: {e}"))?;
        if keys.is_empty() {
            return Err(format!("identity file {shown} holds no age identity"));
        }
        Ok(Identities {
            path: path.to_path_buf(),
            keys,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the age stream in `input` (positioned at its start) for reading the plaintext.
    pub fn open<R: Read>(&self, input: R) -> io::Result<age::stream::StreamReader<R>> {
        let decryptor = age::Decryptor::new(input).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a readable age file: {e}"),
            )
        })?;
        decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "none of the identities in {} can decrypt this archive (it was encrypted to other recipients)",
                        self.path.display()
                    ),
                ),
                other => io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("cannot decrypt: {other}"),
                ),
            })
    }
}

/// The daemon's own identities (`encryption.identity_file`), loaded only for an encrypted archive.
pub fn configured(
    cfg: &EncryptionConfig,
    encrypted: bool,
) -> Result<Option<std::sync::Arc<Identities>>, String> {
    match &cfg.identity_file {
        Some(p) if encrypted => Identities::load(p).map(|i| Some(std::sync::Arc::new(i))),
        _ => Ok(None),
    }
}

/// The error for an encrypted archive opened without `--identity`.
pub fn identity_needed() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the archive is encrypted with age; pass --identity FILE (the age identity file of one of its recipients)",
    )
}

// The `[encryption]` config section, owned here; `config` composes the sections and validates them.
impl serde::Serialize for Recipients {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| r.to_string()))
    }
}

impl<'de> serde::Deserialize<'de> for Recipients {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = <Vec<String> as serde::Deserialize>::deserialize(d)?;
        Recipients::parse(&list).map_err(serde::de::Error::custom)
    }
}

/// age encryption of archives (see `archive::encryption`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// age X25519 public keys (`age1...`); when any is set, archives are `NAME.tar.gz.age`.
    #[serde(default)]
    pub recipients: Recipients,
    /// Optional identity file for the daemon's own full verification of what it wrote. Without
    /// it an encrypted archive is checked by re-reading its checksum and age header only.
    #[serde(default)]
    pub identity_file: Option<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn keypair(dir: &Path) -> (String, PathBuf) {
        let id = age::x25519::Identity::generate();
        let path = dir.join("id.txt");
        std::fs::write(
            &path,
            format!("# created for a test\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        (id.to_public().to_string(), path)
    }

    #[test]
    fn seals_and_opens_a_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (public, id_path) = keypair(dir.path());
        let r = Recipients::parse(&[public]).unwrap();
        let mut sealed = Vec::new();
        let mut w = r.seal(&mut sealed).unwrap();
        w.write_all(b"secret key material").unwrap();
        w.finish().unwrap();
        assert!(sealed.starts_with(AGE_MAGIC));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let ids = Identities::load(&id_path).unwrap();
        let mut out = String::new();
        ids.open(&sealed[..])
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "secret key material");
    }

    #[test]
    fn a_wrong_identity_is_named_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, id_path) = keypair(dir.path());
        let other = age::x25519::Identity::generate().to_public().to_string();
        let mut sealed = Vec::new();
        let mut w = Recipients::parse(&[other])
            .unwrap()
            .seal(&mut sealed)
            .unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap();
        let Err(err) = Identities::load(&id_path).unwrap().open(&sealed[..]) else {
            panic!("a stranger's identity decrypted it");
        };
        let err = err.to_string();
        assert!(err.contains("none of the identities in"), "{err}");
        assert!(err.contains("id.txt"), "{err}");
    }

    #[test]
    fn bad_recipients_and_identity_files_are_refused_without_echoing_secrets() {
        let err = Recipients::parse(&["age1qqq".into()]).unwrap_err();
        assert!(err.starts_with("entry 1 "), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("broken.txt");
        std::fs::write(&p, "AGE-SECRET-KEY-1NOTAKEYATALLBUTSECRETLOOKING\n").unwrap();
        let err = Identities::load(&p).unwrap_err();
        assert!(
            err.contains("broken.txt") && err.contains("line 1"),
            "{err}"
        );
        assert!(!err.contains("NOTAKEY"), "{err}");
        let err = Identities::load(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("cannot read identity file"), "{err}");
    }
}
