//! RFC 2136 dynamic updates signed with TSIG (RFC 8945): BIND, Knot, PowerDNS and
//! many routers' DNS servers accept them.
//!
//! Messages are built, signed and verified with hickory-proto and exchanged over TCP
//! (every server that takes updates speaks it, and a response cannot be spoofed as
//! easily as over UDP). The exchange is done here rather than through a client crate
//! so a refusal keeps its response code and TSIG error, which say what to fix.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm as HTsigAlgorithm;
use hickory_proto::dnssec::rdata::{DNSSECRData, TSIG};
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::dnssec::DnsSecError;
use hickory_proto::op::{update_message, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, RecordSet, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{secret_value, RECORD_TTL};
use crate::api::certificate::{Rfc2136Provider, TsigAlgorithm};
use crate::api::SecretKeyRef;

/// How long one exchange with the name server may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepted clock difference with the server, in seconds (BIND's and nsupdate's
/// default).
const FUDGE: u16 = 300;

/// Why the RFC 2136 provider could not be set up or an update failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TSIG secret's Secret cannot be used.
    #[error(transparent)]
    Secret(#[from] super::SecretError),
    /// The TSIG secret is not base64.
    #[error("rfc2136: tsigSecretRef: Secret `{name}` key `{key}` is not base64 (give the `secret` of the server's key file)")]
    SecretNotBase64 {
        /// Secret name.
        name: String,
        /// Key in the Secret.
        key: String,
    },
    /// `tsigKeyName` is not a DNS name.
    #[error("rfc2136: tsigKeyName `{name}`: {source}")]
    KeyName {
        /// As written.
        name: String,
        /// Cause.
        #[source]
        source: ProtoError,
    },
    /// The TSIG key cannot sign (its algorithm is not supported).
    #[error("rfc2136: TSIG key `{name}`: {source}")]
    Key {
        /// `tsigKeyName`.
        name: String,
        /// Cause.
        #[source]
        source: DnsSecError,
    },
    /// `zone` is not a DNS name.
    #[error("rfc2136: zone `{zone}`: {source}")]
    Zone {
        /// As written.
        zone: String,
        /// Cause.
        #[source]
        source: ProtoError,
    },
    /// `nameserver` is not `host:port`.
    #[error("rfc2136: nameserver `{0}` is not host:port")]
    Nameserver(String),
    /// The record name is not a DNS name.
    #[error("rfc2136: record name `{name}`: {source}")]
    RecordName {
        /// The record name.
        name: String,
        /// Cause.
        #[source]
        source: ProtoError,
    },
    /// The record is not inside the configured (or found) zone.
    #[error("rfc2136: {name} is not inside zone `{zone}`")]
    OutsideZone {
        /// The record name.
        name: String,
        /// The zone.
        zone: String,
    },
    /// Asking the server for the zone of a name failed.
    #[error("rfc2136: finding the zone of {owner} at {server}: {source}")]
    FindZone {
        /// The record name.
        owner: String,
        /// The name server.
        server: String,
        /// Cause.
        #[source]
        source: Exchange,
    },
    /// The server answered the zone query with an error code.
    #[error("rfc2136: finding the zone of {owner} at {server}: {}; set rfc2136.zone", rcode_name(*.code))]
    ZoneQueryFailed {
        /// The record name.
        owner: String,
        /// The name server.
        server: String,
        /// Its response code.
        code: ResponseCode,
    },
    /// The server's answer holds no SOA for the name.
    #[error("rfc2136: finding the zone of {owner} at {server}: the server is not authoritative for it (no SOA in its answer); set rfc2136.zone")]
    NotAuthoritative {
        /// The record name.
        owner: String,
        /// The name server.
        server: String,
    },
    /// The update could not be signed, sent or read back.
    #[error("rfc2136 update of {name} at {server}: {source}")]
    Update {
        /// The record name.
        name: String,
        /// The name server.
        server: String,
        /// Cause.
        #[source]
        source: Exchange,
    },
    /// The server refused the update; `reason` says what to fix.
    #[error("rfc2136 update of {name} at {server} refused: {reason}")]
    Refused {
        /// The record name.
        name: String,
        /// The name server.
        server: String,
        /// Its response code.
        code: ResponseCode,
        /// The TSIG error of its answer (RFC 8945 §4.3), if any.
        tsig_error: Option<u16>,
        /// The code and TSIG error explained.
        reason: String,
    },
    /// The server's answer is not signed with the key.
    #[error("rfc2136 update of {name} at {server}: the server's answer is not signed with key `{key}`: {source}")]
    Unsigned {
        /// The record name.
        name: String,
        /// The name server.
        server: String,
        /// `tsigKeyName`.
        key: String,
        /// Cause.
        #[source]
        source: ProtoError,
    },
}

/// Why one exchange of a message with the name server failed.
#[derive(Debug, thiserror::Error)]
pub enum Exchange {
    /// The update could not be signed.
    #[error("signing failed: {0}")]
    Sign(#[source] ProtoError),
    /// The message could not be encoded.
    #[error("{0}")]
    Encode(#[source] ProtoError),
    /// The message does not fit DNS over TCP.
    #[error("message too long")]
    TooLong,
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// No answer in time.
    #[error("no answer within {}s", EXCHANGE_TIMEOUT.as_secs())]
    Timeout,
    /// The answer is not a DNS message.
    #[error("bad response: {0}")]
    BadResponse(#[source] ProtoError),
    /// The answer's id is another message's.
    #[error("the response is for another message")]
    OtherMessage,
}

/// An RFC 2136 name server and the TSIG key to sign updates with.
pub struct Rfc2136 {
    nameserver: String,
    zone: Option<Name>,
    key_name: String,
    algorithm: TsigAlgorithm,
    signer: TSigner,
}

impl Rfc2136 {
    /// Checks the settings and decodes the TSIG secret.
    pub fn new(
        p: &Rfc2136Provider,
        secret: &dyn Fn(&SecretKeyRef) -> Option<Vec<u8>>,
    ) -> Result<Rfc2136, Error> {
        let raw = secret_value(secret, "rfc2136", "tsigSecretRef", &p.tsig_secret_ref)?;
        let key = decode_tsig_secret(&raw).ok_or_else(|| Error::SecretNotBase64 {
            name: p.tsig_secret_ref.name.clone(),
            key: p.tsig_secret_ref.key.clone(),
        })?;
        let key_name = Name::from_ascii(&p.tsig_key_name).map_err(|source| Error::KeyName {
            name: p.tsig_key_name.clone(),
            source,
        })?;
        let algorithm = match p.tsig_algorithm {
            TsigAlgorithm::HmacSha256 => HTsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384 => HTsigAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512 => HTsigAlgorithm::HmacSha512,
        };
        let signer =
            TSigner::new(key, algorithm, key_name, FUDGE).map_err(|source| Error::Key {
                name: p.tsig_key_name.clone(),
                source,
            })?;
        let zone = match &p.zone {
            Some(z) => Some(fqdn(z).map_err(|source| Error::Zone {
                zone: z.clone(),
                source,
            })?),
            None => None,
        };
        if !super::propagation::is_host_port(&p.nameserver) {
            return Err(Error::Nameserver(p.nameserver.clone()));
        }
        Ok(Rfc2136 {
            nameserver: p.nameserver.clone(),
            zone,
            key_name: p.tsig_key_name.clone(),
            algorithm: p.tsig_algorithm,
            signer,
        })
    }

    /// Adds `value` to the TXT record `name` (other values stay).
    pub async fn set(&self, name: &str, value: &str) -> Result<(), Error> {
        let (rrset, zone) = self.rrset(name, value).await?;
        let msg = update_message::append(rrset, zone.clone(), false, false);
        self.update(msg, name, &zone).await
    }

    /// Removes `value` from the TXT record `name`; nothing to do when it is absent.
    pub async fn clear(&self, name: &str, value: &str) -> Result<(), Error> {
        let (rrset, zone) = self.rrset(name, value).await?;
        let msg = update_message::delete_by_rdata(rrset, zone.clone(), false);
        self.update(msg, name, &zone).await
    }

    async fn rrset(&self, name: &str, value: &str) -> Result<(RecordSet, Name), Error> {
        let owner = fqdn(name).map_err(|source| Error::RecordName {
            name: name.to_string(),
            source,
        })?;
        let zone = match &self.zone {
            Some(z) => z.clone(),
            None => self.find_zone(&owner).await?,
        };
        if !zone.zone_of(&owner) {
            return Err(Error::OutsideZone {
                name: name.to_string(),
                zone: zone.to_ascii().trim_end_matches('.').to_string(),
            });
        }
        let mut rrset = RecordSet::with_ttl(owner, RecordType::TXT, RECORD_TTL);
        rrset.set_dns_class(DNSClass::IN);
        rrset.add_rdata(RData::TXT(TXT::new(vec![value.to_string()])));
        Ok((rrset, zone))
    }

    /// The zone holding `owner`, from the SOA the name server returns for it.
    async fn find_zone(&self, owner: &Name) -> Result<Name, Error> {
        let owner_text = || owner.to_ascii().trim_end_matches('.').to_string();
        let failed = |source| Error::FindZone {
            owner: owner_text(),
            server: self.nameserver.clone(),
            source,
        };
        let mut msg = Message::new();
        msg.set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false);
        msg.add_query(Query::query(owner.clone(), RecordType::SOA));
        let bytes = msg.to_vec().map_err(|e| failed(Exchange::Encode(e)))?;
        let raw = self.exchange(&bytes).await.map_err(failed)?;
        let resp = Message::from_vec(&raw).map_err(|e| failed(Exchange::BadResponse(e)))?;
        if resp.response_code() != ResponseCode::NoError
            && resp.response_code() != ResponseCode::NXDomain
        {
            return Err(Error::ZoneQueryFailed {
                owner: owner_text(),
                server: self.nameserver.clone(),
                code: resp.response_code(),
            });
        }
        resp.answers()
            .iter()
            .chain(resp.name_servers())
            .find(|r| r.record_type() == RecordType::SOA && r.name().zone_of(owner))
            .map(|r| r.name().clone())
            .ok_or_else(|| Error::NotAuthoritative {
                owner: owner_text(),
                server: self.nameserver.clone(),
            })
    }

    /// Signs `msg`, sends it, and turns a refusal into an error that says why.
    async fn update(&self, mut msg: Message, name: &str, zone: &Name) -> Result<(), Error> {
        let failed = |source| Error::Update {
            name: name.to_string(),
            server: self.nameserver.clone(),
            source,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0) as u32;
        let mut verifier = msg
            .finalize(&self.signer, now)
            .map_err(|e| failed(Exchange::Sign(e)))?;
        let bytes = msg.to_vec().map_err(|e| failed(Exchange::Encode(e)))?;
        let raw = self.exchange(&bytes).await.map_err(failed)?;
        let resp = Message::from_vec(&raw).map_err(|e| failed(Exchange::BadResponse(e)))?;
        if resp.id() != msg.id() {
            return Err(failed(Exchange::OtherMessage));
        }
        let code = resp.response_code();
        if code != ResponseCode::NoError {
            let tsig_error = tsig_error(&resp);
            return Err(Error::Refused {
                name: name.to_string(),
                server: self.nameserver.clone(),
                code,
                tsig_error,
                reason: self.explain(code, tsig_error, name, zone),
            });
        }
        if let Some(verify) = verifier.as_mut() {
            verify(&raw).map_err(|source| Error::Unsigned {
                name: name.to_string(),
                server: self.nameserver.clone(),
                key: self.key_name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn explain(&self, code: ResponseCode, tsig: Option<u16>, name: &str, zone: &Name) -> String {
        let rc = rcode_name(code);
        let zone = zone.to_ascii();
        let zone = zone.trim_end_matches('.');
        let alg = serde_json::to_value(self.algorithm)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let key = &self.key_name;
        match (code, tsig) {
            (_, Some(16)) => format!(
                "{rc} (TSIG error BADSIG: the secret of key `{key}` does not match the server's)"
            ),
            (_, Some(17)) => format!(
                "{rc} (TSIG error BADKEY: the server has no key `{key}` with algorithm {alg})"
            ),
            (_, Some(18)) => format!(
                "{rc} (TSIG error BADTIME: this machine's clock differs from the server's by more than {FUDGE}s)"
            ),
            (_, Some(e)) if e != 0 => format!("{rc} (TSIG error {e})"),
            (ResponseCode::NotAuth, _) => format!(
                "{rc} (the server is not authoritative for zone `{zone}`, or did not accept TSIG key `{key}`)"
            ),
            (ResponseCode::Refused, _) => format!(
                "{rc} (the server's update policy does not let key `{key}` change {name} in zone `{zone}`)"
            ),
            (ResponseCode::NotZone, _) => format!("{rc} ({name} is not in zone `{zone}`)"),
            (ResponseCode::ServFail, _) => {
                format!("{rc} (the server could not apply the update; see its log)")
            }
            (ResponseCode::NotImp, _) => format!("{rc} (the server does not support dynamic updates)"),
            _ => rc,
        }
    }

    /// One DNS-over-TCP exchange (RFC 1035 §4.2.2: a two-byte length, then the message).
    async fn exchange(&self, msg: &[u8]) -> Result<Vec<u8>, Exchange> {
        let len = u16::try_from(msg.len()).map_err(|_| Exchange::TooLong)?;
        let io = async {
            let mut s = TcpStream::connect(&self.nameserver).await?;
            let mut out = Vec::with_capacity(msg.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(msg);
            s.write_all(&out).await?;
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await?;
            let mut buf = vec![0u8; u16::from_be_bytes(l) as usize];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, io).await {
            Ok(Ok(buf)) => Ok(buf),
            Ok(Err(e)) => Err(Exchange::Io(e)),
            Err(_) => Err(Exchange::Timeout),
        }
    }
}

/// A fully qualified name.
fn fqdn(s: &str) -> Result<Name, ProtoError> {
    let mut n = Name::from_ascii(s.trim_end_matches('.'))?;
    n.set_fqdn(true);
    Ok(n)
}

/// The TSIG secret as written in the server's key file (base64), tolerating
/// surrounding whitespace and a missing padding.
fn decode_tsig_secret(raw: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let text = text.trim_matches('"');
    if text.is_empty() {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .ok()
        .filter(|k| !k.is_empty())
}

/// The TSIG error field of a response (RFC 8945 §4.3), which hickory keeps private:
/// read back from the record's wire form.
fn tsig_error(resp: &Message) -> Option<u16> {
    let tsig: &TSIG = resp.signature().iter().find_map(|r| match r.data() {
        RData::DNSSEC(DNSSECRData::TSIG(t)) => Some(t),
        _ => None,
    })?;
    let mut buf = Vec::new();
    {
        let mut enc = BinEncoder::new(&mut buf);
        tsig.emit(&mut enc).ok()?;
    }
    let mut dec = BinDecoder::new(&buf);
    Name::read(&mut dec).ok()?; // algorithm
    dec.read_slice(6 + 2).ok()?; // time signed, fudge
    let mac_len = dec.read_u16().ok()?.unverified() as usize;
    dec.read_slice(mac_len).ok()?;
    dec.read_u16().ok()?; // original id
    Some(dec.read_u16().ok()?.unverified())
}

/// The mnemonic of a response code (RFC 1035, RFC 2136).
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("response code {}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_as_written_in_key_files() {
        assert_eq!(
            decode_tsig_secret(b"  c2VjcmV0\n").as_deref(),
            Some(&b"secret"[..])
        );
        assert_eq!(
            decode_tsig_secret(b"\"c2VjcmV0\"").as_deref(),
            Some(&b"secret"[..])
        );
        assert!(decode_tsig_secret(b"not base64!").is_none());
        assert!(decode_tsig_secret(b"").is_none());
    }

    #[test]
    fn tsig_error_is_read_from_the_record() {
        use hickory_proto::dnssec::rdata::tsig::make_tsig_record;
        let mut m = Message::new();
        let t = TSIG::new(HTsigAlgorithm::HmacSha256, 1, 300, vec![], 7, 17, vec![]);
        m.add_tsig(make_tsig_record(Name::from_ascii("k.").unwrap(), t));
        let back = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(tsig_error(&back), Some(17));
        assert_eq!(tsig_error(&Message::new()), None);
    }
}
