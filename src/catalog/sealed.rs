//! Secrets at rest in the catalog: the secret fields of a definition given
//! through the API are sealed (XChaCha20-Poly1305, key `admin.secret_key`)
//! before the definition is written, and opened by each process when it
//! builds its desired set. The stream never holds a secret in clear.
//!
//! A sealed value replaces the string in place: `{"sealed": BASE64}`, where
//! the bytes are a random 24-byte nonce then the ciphertext. The
//! subscription's name is the associated data, so a sealed value copied into
//! another subscription does not open.
//! Must not: log or return an opened value.

use base64::Engine;
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use rand::RngCore;
use serde_json::{Value, json};

use crate::config::Secret;

const NONCE_BYTES: usize = 24;

/// The key, parsed from its 64 hex characters.
#[derive(Clone)]
pub struct SecretKey(XChaCha20Poly1305);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// `admin.secret_key`: 32 bytes as 64 hex characters (`openssl rand -hex 32`).
    pub fn parse(secret: &Secret) -> Result<Self, String> {
        let bytes = hex::decode(secret.expose().trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or("must be 32 bytes written as 64 hex characters (openssl rand -hex 32)")?;
        Ok(Self(XChaCha20Poly1305::new_from_slice(&bytes).expect("32-byte key")))
    }

    fn seal_one(&self, name: &str, plain: &str) -> Value {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: name.as_bytes() })
            .expect("sealing cannot fail for in-memory buffers");
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        json!({ "sealed": base64::engine::general_purpose::STANDARD.encode(bytes) })
    }

    fn open_one(&self, name: &str, sealed: &str) -> Result<String, String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| "not base64")?;
        if bytes.len() <= NONCE_BYTES {
            return Err("too short".into());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: name.as_bytes() })
            .map_err(|_| "does not open with this key (another key, or another subscription's value)")?;
        String::from_utf8(plain).map_err(|_| "not UTF-8".into())
    }

    /// Seals every secret of `definition` still in clear.
    pub fn seal(&self, name: &str, definition: &mut Value) {
        for_each_secret(definition, &mut |value| {
            if let Value::String(plain) = value {
                *value = self.seal_one(name, plain);
            }
            Ok(())
        })
        .expect("sealing never fails");
    }

    /// Opens every sealed secret of `definition` in place.
    pub fn open(&self, name: &str, definition: &mut Value) -> Result<(), String> {
        for_each_secret(definition, &mut |value| {
            if let Some(sealed) = sealed_text(value) {
                *value = Value::String(self.open_one(name, &sealed)?);
            }
            Ok(())
        })
    }
}

fn sealed_text(value: &Value) -> Option<String> {
    value.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("sealed")).and_then(Value::as_str).map(str::to_owned)
}

/// Whether `definition` holds any sealed value (it then needs the key).
pub fn has_sealed(definition: &mut Value) -> bool {
    let mut found = false;
    let _ = for_each_secret(definition, &mut |value| {
        found |= sealed_text(value).is_some();
        Ok(())
    });
    found
}

/// Calls `f` on each secret-holding value of a definition: `signing_secret`
/// (one or a list), every `headers` value, `auth.bearer`,
/// `auth.basic.password`. The same fields `SubscriptionConfig` reads as
/// secrets.
fn for_each_secret(definition: &mut Value, f: &mut dyn FnMut(&mut Value) -> Result<(), String>) -> Result<(), String> {
    let Some(object) = definition.as_object_mut() else { return Ok(()) };
    match object.get_mut("signing_secret") {
        Some(Value::Array(list)) => list.iter_mut().try_for_each(&mut *f)?,
        Some(value) => f(value)?,
        None => {}
    }
    if let Some(Value::Object(headers)) = object.get_mut("headers") {
        headers.values_mut().try_for_each(&mut *f)?;
    }
    if let Some(Value::Object(auth)) = object.get_mut("auth") {
        if let Some(bearer) = auth.get_mut("bearer") {
            f(bearer)?;
        }
        if let Some(Value::Object(basic)) = auth.get_mut("basic")
            && let Some(password) = basic.get_mut("password")
        {
            f(password)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: &str) -> SecretKey {
        SecretKey::parse(&Secret::new(byte.repeat(64))).unwrap()
    }

    #[test]
    fn seals_every_secret_field_and_opens_them_back() {
        let plain = json!({
            "topics": ["a.#"], "url": "http://h/",
            "signing_secret": ["whsec_one", "whsec_two"],
            "headers": {"x-api-key": "k-123"},
            "auth": {"basic": {"user": "u", "password": "p@ss"}},
        });
        let mut sealed = plain.clone();
        key("a").seal("billing", &mut sealed);
        let text = sealed.to_string();
        for secret in ["whsec_one", "whsec_two", "k-123", "p@ss"] {
            assert!(!text.contains(secret), "{secret} in clear: {text}");
        }
        assert!(text.contains("\"user\":\"u\""), "not a secret: {text}");
        assert!(has_sealed(&mut sealed.clone()));
        let mut opened = sealed.clone();
        key("a").open("billing", &mut opened).unwrap();
        assert_eq!(opened, plain);
        // Another key, or another subscription's name, does not open it.
        assert!(key("b").open("billing", &mut sealed.clone()).is_err());
        assert!(key("a").open("orders", &mut sealed.clone()).is_err());
        // Sealing again leaves sealed values alone (a PATCH of other fields).
        let mut again = sealed.clone();
        key("a").seal("billing", &mut again);
        assert_eq!(again, sealed);
    }

    #[test]
    fn the_key_is_64_hex_characters() {
        assert!(SecretKey::parse(&Secret::new("ab".repeat(32))).is_ok());
        assert!(SecretKey::parse(&Secret::new("ab".repeat(16))).is_err());
        assert!(SecretKey::parse(&Secret::new("zz".repeat(32))).is_err());
    }
}
