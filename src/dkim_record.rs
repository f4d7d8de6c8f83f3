//! `mtac dkim-record`: the DNS TXT record to publish for a `dkim-sign` key, read by the parser
//! `mtac check` and the node use (`mtac_ruleset::dkim`), so a key this prints a record for is a
//! key the node signs with.
//!
//! No `dkim-keygen`: openssl makes both kinds of key (`openssl genpkey -algorithm RSA -pkeyopt
//! rsa_keygen_bits:2048`, `-algorithm ed25519`), and ring, the one crypto provider, cannot make
//! RSA keys.

use clap::Args;
use mtac_ruleset::dkim::DkimKey;
use mtac_ruleset::syntax;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DkimRecordArgs {
    /// The private key file (PEM: RSA of 2048 bits or more, or Ed25519)
    key: PathBuf,
    /// The selector (`key … selector=` in the policy)
    #[arg(long, short)]
    selector: String,
    /// The signing domain (`key "DOMAIN"` in the policy)
    #[arg(long, short)]
    domain: String,
}

/// Print `SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=…; p=…"` (the value in strings of at
/// most 255 bytes) on stdout, and what the key is on stderr.
pub fn dkim_record(args: &DkimRecordArgs) -> Result<ExitCode, String> {
    let domain = args.domain.trim_end_matches('.').to_ascii_lowercase();
    if !syntax::is_fqdn(&domain) || !domain.is_ascii() {
        return Err(format!("--domain {}: not a domain (IDNs in their xn-- form)", args.domain));
    }
    if !syntax::is_hostname(&args.selector) || !args.selector.is_ascii() {
        return Err(format!("--selector {}: not a selector (letters, digits, hyphens, dots)", args.selector));
    }
    let pem = std::fs::read(&args.key).map_err(|e| format!("{}: {e}", args.key.display()))?;
    let key = DkimKey::from_pem(&pem).map_err(|e| format!("{}: {e}", args.key.display()))?;
    eprintln!("; {} key, published at {}._domainkey.{domain}", key.algorithm, args.selector);
    println!("{}", key.zone_line(&args.selector, &domain));
    Ok(ExitCode::SUCCESS)
}
