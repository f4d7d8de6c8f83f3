//! `mtac build --export-directory`: copy the directory's addresses into the ruleset.
//!
//! Seed 000 kept a replica of the directory on every node. The same here is the farm's compiled
//! address table: every address the directory holds (the values of the `directory`'s
//! `attributes`, from entries that its `filter` matches with `{address}` as a presence test)
//! is added to `local-addresses`, so a node validates those recipients with no LDAP round trip.
//! With `lookups=#false` the table is the whole truth and nodes never talk to LDAP; otherwise
//! an address not in the table (created since the build) is still asked at run time.
//!
//! The search is paged (RFC 2696), so a directory with more entries than its size limit is read
//! whole — provided the bind DN may page past it (OpenLDAP: `limits … size.prtotal=unlimited`).

use crate::diag::{Diag, Reporter};
use crate::lower::{AddressEntry, Draft};
use mtac_ruleset::model::Directory;
use mtac_ruleset::syntax;

/// Entries per page.
const PAGE: i32 = 500;

/// The whole export: millions of entries page through in well under this.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Export every farm's directory into its address table. Errors are diagnostics at the
/// `directory` node: a build that was asked to export and could not must not ship.
pub fn export(reporter: &mut Reporter, draft: &mut Draft) {
    for farm in &mut draft.farms {
        let Some((settings, origin)) = farm.directory.clone() else { continue };
        match read_all(&settings) {
            Ok(addresses) => {
                let mut added = 0u64;
                let mut skipped = 0u64;
                for address in addresses {
                    if syntax::is_mailbox(&address) {
                        farm.local_addresses.push(AddressEntry { address, origin });
                        added += 1;
                    } else {
                        skipped += 1;
                    }
                }
                farm.local_address_sources.0.push(format!("{} (exported)", settings.url));
                if skipped > 0 {
                    reporter.report(
                        Diag::warning(
                            "mtac::directory::export-invalid",
                            format!("{skipped} value(s) in the directory are not addresses; they were left out"),
                        )
                        .help("check the `attributes` of the directory"),
                        origin,
                        "exported from here",
                    );
                }
                if let Some((d, _)) = farm.directory.as_mut() {
                    d.exported = added;
                }
            }
            Err(e) => reporter.report(
                Diag::error("mtac::directory::export", format!("cannot export the directory {}: {e}", settings.url))
                    .help("the build needs the directory reachable from where it runs; without --export-directory nodes ask it at run time"),
                origin,
                "this directory",
            ),
        }
    }
}

/// Every value of the directory's address attributes, lowercased, sorted, without duplicates.
fn read_all(settings: &Directory) -> Result<Vec<String>, String> {
    let settings = settings.clone();
    // A thread with its own runtime: the compiler is also called from inside a node's runtime.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        // A directory that stops answering mid-export fails the build instead of hanging it.
        runtime
            .block_on(async { tokio::time::timeout(EXPORT_TIMEOUT, search(&settings)).await })
            .map_err(|_| format!("no complete answer within {} s", EXPORT_TIMEOUT.as_secs()))?
    })
    .join()
    .map_err(|_| "the export thread failed".to_owned())?
}

async fn search(settings: &Directory) -> Result<Vec<String>, String> {
    use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
    let timeout = std::time::Duration::from_millis(u64::from(settings.timeout_ms).max(10_000));
    let conn = ldap3::LdapConnSettings::new().set_conn_timeout(timeout);
    let (connection, mut ldap) =
        ldap3::LdapConnAsync::with_settings(conn, &settings.url).await.map_err(|e| e.to_string())?;
    ldap3::drive!(connection);
    if let Some(dn) = &settings.bind_dn {
        let file = settings.bind_password_file.as_deref().unwrap_or_default();
        let password = std::fs::read_to_string(file).map_err(|e| format!("bind password file {file}: {e}"))?;
        ldap.simple_bind(dn, password.trim_end_matches(['\r', '\n']))
            .await
            .and_then(ldap3::LdapResult::success)
            .map_err(|e| format!("bind as {dn}: {e}"))?;
    }
    // `(mail={address})` becomes the presence test `(mail=*)`.
    let filter = settings.filter.replace("{address}", "*");
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(PAGE))];
    let mut stream = ldap
        .streaming_search_with(adapters, &settings.base, ldap3::Scope::Subtree, &filter, settings.attributes.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(entry) = stream.next().await.map_err(|e| e.to_string())? {
        let entry = ldap3::SearchEntry::construct(entry);
        for (name, values) in entry.attrs {
            if settings.attributes.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
                out.extend(values.into_iter().map(|v| v.to_ascii_lowercase()));
            }
        }
    }
    let result = stream.finish().await;
    result.success().map_err(|e| format!("search under {}: {e}", settings.base))?;
    let _ = ldap.unbind().await;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}
