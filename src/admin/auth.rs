//! Password checks for the admin console, against the hashes in the policy
//! (`[admin] users`): PostgreSQL's own formats, so a DBA can copy a role's
//! `rolpassword`, or make one with `zoneguard hash-password`:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802 /
//! 7677, what PostgreSQL stores) or `md5<hex of md5(password || role)>`.

use crate::net::Stream;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol;

type HmacSha256 = Hmac<Sha256>;

const SCRAM_ITERATIONS: u32 = 4096;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The md5 hash to store for a role and password.
pub fn md5_hash(role: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(role.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// PostgreSQL's md5 challenge answer for a stored "md5..." hash and a salt.
pub fn md5_response(stored: &str, salt: &[u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(&stored.as_bytes()[3..]);
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// A SCRAM-SHA-256 verifier in PostgreSQL's format, with a random salt.
pub fn scram_verifier(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, SCRAM_ITERATIONS, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// A parsed SCRAM verifier.
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
pub fn parse_verifier(s: &str) -> Option<Verifier> {
    let rest = s.strip_prefix("SCRAM-SHA-256$")?;
    let (iter_salt, keys) = rest.split_once('$')?;
    let (iter, salt) = iter_salt.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    let v = Verifier {
        iterations: iter.parse().ok().filter(|n| *n > 0)?,
        salt: B64.decode(salt).ok()?,
        stored_key: B64.decode(stored).ok()?,
        server_key: B64.decode(server).ok()?,
    };
    (v.stored_key.len() == 32 && v.server_key.len() == 32 && !v.salt.is_empty()).then_some(v)
}

/// Whether `s` is a hash the console can check.
pub fn valid_hash(s: &str) -> bool {
    let md5 = s.len() == 35
        && s.starts_with("md5")
        && s[3..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    md5 || parse_verifier(s).is_some()
}

/// Reads one message (at most 1 MiB) from a console client.
pub(super) async fn read_frame(client: &mut Stream, buf: &mut BytesMut) -> Option<protocol::Frame> {
    loop {
        match protocol::next_frame(buf, 1 << 20) {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {}
            Err(_) => return None,
        }
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A verifier no password matches, the same for the same name within one
/// process (so repeated tries see the same salt, as for a real role).
pub fn mock_verifier(secret: &str, user: &str) -> Verifier {
    let digest = |what: &str| Sha256::digest(format!("{secret}\0{what}\0{user}")).to_vec();
    Verifier {
        iterations: 4096,
        salt: digest("salt")[..16].to_vec(),
        stored_key: digest("stored"),
        server_key: digest("server"),
    }
}

/// Runs the password exchange for `stored`: SCRAM for a SCRAM verifier, md5
/// for an md5 hash, and for an unknown role (None) a SCRAM exchange against
/// `mock`, which fails. `Some(true)` when the password is right,
/// `Some(false)` when the client answered wrongly, `None` when it left or
/// sent something that is no answer (psql leaves to prompt for a password).
pub async fn authenticate(
    client: &mut Stream,
    buf: &mut BytesMut,
    stored: Option<&str>,
    mock: Verifier,
) -> Option<bool> {
    match stored {
        Some(s) if s.starts_with("md5") => md5(client, buf, s).await,
        Some(s) => scram(client, buf, &parse_verifier(s)?).await,
        None => scram(client, buf, &mock).await.map(|_| false),
    }
}

async fn md5(client: &mut Stream, buf: &mut BytesMut, stored: &str) -> Option<bool> {
    let salt: [u8; 4] = rand::random();
    client
        .write_all(&protocol::authentication(5, &salt))
        .await
        .ok()?;
    let answer = read_frame(client, buf).await?;
    if answer.tag() != b'p' {
        return Some(false);
    }
    let mut body = answer.body();
    let given = protocol::take_cstr(&mut body)?;
    Some(md5_response(stored, &salt).as_bytes() == given)
}

/// SCRAM-SHA-256 without channel binding (RFC 5802, as PostgreSQL does it).
async fn scram(client: &mut Stream, buf: &mut BytesMut, v: &Verifier) -> Option<bool> {
    client
        .write_all(&protocol::authentication(10, b"SCRAM-SHA-256\0\0"))
        .await
        .ok()?;
    // SASLInitialResponse: mechanism, then the client-first-message.
    let first = read_frame(client, buf).await?;
    let mut body = first.body();
    if first.tag() != b'p' || protocol::take_cstr(&mut body)? != b"SCRAM-SHA-256" || body.len() < 4
    {
        return Some(false);
    }
    let client_first = std::str::from_utf8(&body[4..]).ok()?;
    // gs2 header "n,," or "y,,"; channel binding ("p=") is not offered.
    let (gs2, bare) = match client_first.get(..3) {
        Some("n,,") | Some("y,,") => (&client_first[..3], &client_first[3..]),
        _ => return Some(false),
    };
    let client_nonce = bare.split(',').find_map(|a| a.strip_prefix("r="))?;
    let server_nonce: [u8; 18] = rand::random();
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&v.salt), v.iterations);
    client
        .write_all(&protocol::authentication(11, server_first.as_bytes()))
        .await
        .ok()?;
    // SASLResponse: the client-final-message.
    let last = read_frame(client, buf).await?;
    if last.tag() != b'p' {
        return Some(false);
    }
    let client_final = std::str::from_utf8(last.body()).ok()?;
    let (without_proof, proof) = client_final.rsplit_once(",p=")?;
    let mut channel = None;
    let mut final_nonce = None;
    for attr in without_proof.split(',') {
        if let Some(c) = attr.strip_prefix("c=") {
            channel = Some(c);
        } else if let Some(r) = attr.strip_prefix("r=") {
            final_nonce = Some(r);
        }
    }
    if channel != Some(B64.encode(gs2).as_str()) || final_nonce != Some(nonce.as_str()) {
        return Some(false);
    }
    let proof = B64.decode(proof).ok()?;
    if proof.len() != 32 {
        return Some(false);
    }
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&v.stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    let ok = Sha256::digest(&client_key)
        .iter()
        .zip(&v.stored_key)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    if !ok {
        return Some(false);
    }
    let server_signature = hmac(&v.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", B64.encode(server_signature));
    client
        .write_all(&protocol::authentication(12, server_final.as_bytes()))
        .await
        .ok()?;
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_round_trip_and_hashes_validate() {
        let v = scram_verifier("secret");
        assert!(valid_hash(&v), "{v}");
        let parsed = parse_verifier(&v).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert!(valid_hash(&md5_hash("zgadmin", "zgadmin")));
        assert!(!valid_hash("secret"));
        assert!(!valid_hash(
            "SCRAM-SHA-256$4096:c2FsdA==$bm90MzJieXRlcw==:eA=="
        ));
    }
}
