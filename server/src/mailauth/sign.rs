//! DKIM signing of an authenticated user's message as it streams in: see the module doc of
//! [`crate::mailauth`].

use std::sync::Arc;
use std::time::SystemTime;

use crate::directory::header_from;
use crate::mailauth::dkim::{DkimError, KeyCache, Signer};

/// The signing of one message.
///
/// Call order: [`Signing::update`] with each chunk of the message (as stored), then
/// [`Signing::finish`] once.
#[derive(Debug, Default)]
pub struct Signing {
    signer: Signer,
}

impl Signing {
    /// Feeds the next chunk of the message.
    pub fn update(&mut self, chunk: &[u8]) {
        self.signer.update(chunk);
    }

    /// Signs `fields` too, as fields put on top of the message (see [`Signer::prepend`]).
    pub fn prepend(&mut self, fields: &str) {
        self.signer.prepend(fields);
    }

    /// The `DKIM-Signature` fields (each ending in CRLF) for the message whose header section
    /// (at least its From field) is `header`: one per key of the From domain in
    /// `keys`, none when that domain is not local or has no keys. An error means the
    /// message must not go out unsigned.
    pub async fn finish(
        self,
        keys: Arc<KeyCache>,
        header: &[u8],
        now: SystemTime,
    ) -> Result<Vec<String>, DkimError> {
        let Some(domain) = from_domain(header) else {
            // No readable From: nothing to align a signature with. An authenticated user's
            // header From is checked by `[relay] header_from` anyway.
            return Ok(Vec::new());
        };
        smol::unblock(move || {
            let keys = match keys.get(&domain) {
                Ok(keys) => keys,
                // Not a local domain (a `[senders]` grant, say): not ours to sign.
                Err(DkimError::UnknownDomain { .. } | DkimError::BadDomain(_)) => {
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e),
            };
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            self.signer.finish(&keys, now)
        })
        .await
    }
}

/// The domain of the first address of the first From field of `header`.
fn from_domain(header: &[u8]) -> Option<String> {
    let value = header_from::from_fields(header).into_iter().next()?;
    let address = header_from::from_addresses(&value).into_iter().next()?;
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('>').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domains() {
        let cases: [(&[u8], Option<&str>); 4] = [
            (
                b"To: x@y\r\nFrom: Alice <alice@Example.org>\r\n",
                Some("Example.org"),
            ),
            (b"From: a@b.example, c@d.example\r\n", Some("b.example")),
            (b"Subject: none\r\n", None),
            (b"From: undisclosed\r\n", None),
        ];
        for (header, want) in cases {
            assert_eq!(
                from_domain(header).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }
}
