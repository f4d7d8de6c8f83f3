#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use std::path::Path;

fn compile(text: &str, dir: &Path) -> Policy {
    let compilation = crate::compile_text("policy.kdl", text, Some(dir.to_path_buf()));
    let errors: Vec<String> = compilation
        .diagnostics
        .list
        .iter()
        .filter(|d| d.severity == miette::Severity::Error)
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{text}");
    compilation.output.expect("compiles").ruleset.policy().clone()
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Every key of the model's JSON form (struct fields and enum variants, at any depth).
fn keys(value: &serde_json::Value, into: &mut HashSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                into.insert(key.clone());
                keys(value, into);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, into)),
        _ => {}
    }
}

/// A field added to the model must be printed: every field and variant name the model's JSON
/// has, over the example policies, is a name the printer's source destructures or matches.
#[test]
fn the_printer_knows_every_field_of_the_model() {
    let source = [include_str!("../settings.rs"), include_str!("farm.rs")].concat();
    let words: HashSet<&str> = source.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
    let mut all = HashSet::new();
    for example in ["company", "isp", "quickstart", "sender-auth"] {
        let path = workspace().join("examples").join(example).join("policy.kdl");
        let compilation = crate::compile_path(&path);
        let policy = compilation.output.expect("the example compiles").ruleset.policy().clone();
        keys(&serde_json::to_value(&policy).unwrap(), &mut all);
    }
    let unknown: Vec<&String> = all.iter().filter(|k| !words.contains(k.as_str())).collect();
    assert!(unknown.is_empty(), "model fields the settings printer does not print: {unknown:?}");
}

#[test]
fn defaults_are_marked_and_written_values_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let policy = compile(
        "hostname \"mx.example.net\"\nfarm \"mx\" kind=\"inbound-mx\" {\n listen \"127.0.0.1:2525\"\n \
         local-domains \"example.org\"\n limits { connections 500 }\n greylist\n relay { backend \"smtp://127.0.0.1:25\" }\n}\n",
        dir.path(),
    );
    let text = print(&policy, &Request { farm: None }).unwrap();
    assert!(text.contains("        connections 500\n"), "{text}");
    assert!(text.contains("        connections-per-ip 20 // default\n"), "{text}");
    assert!(text.contains("banner \"ESMTP mtac\" // default\n"), "{text}");
    assert!(text.contains("socket=\"/dev/shm/mtac/admin.sock\" // default\n"), "{text}");
    assert!(text.contains("timeout command=\"5m\" data=\"10m\" relay=\"2m\" pregreet=\"2s\" // default"), "{text}");
    assert!(text.contains("// local-domains: table mx.local-domains (1 entries, from inline)"), "{text}");
    // The greylist's defaults are those of a bare `greylist`.
    assert!(
        text.contains("auto-whitelist=5 reply=\"451 4.7.1 Greylisted, please try again later\" { // default"),
        "{text}"
    );
}

#[test]
fn an_unknown_farm_is_named_with_the_closest() {
    let dir = tempfile::tempdir().unwrap();
    let policy = compile(
        "hostname \"mx.example.net\"\nfarm \"inbound\" kind=\"inbound-mx\" {\n listen \"127.0.0.1:25\"\n local-domains \"example.org\"\n \
         relay { backend \"smtp://127.0.0.1:25\" }\n}\n",
        dir.path(),
    );
    let err = print(&policy, &Request { farm: Some("inbund") }).unwrap_err();
    assert!(err.contains("did you mean `inbound`"), "{err}");
}

/// The print is a policy: compiled again, it prints the same (a submission farm, whose every
/// setting is printable; inbound farms lose their lists, which are printed as comments).
#[test]
fn the_print_compiles_back_to_the_same_settings() {
    let tls = workspace().join("examples/company/tls");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "hostname \"smtp.acme.example\"\nbanner \"ESMTP\"\nspool \"/run/mtac/spool\" max-bytes=\"512MiB\"\n\
         dns timeout=\"1500ms\" {{ nameserver \"10.0.0.53\" }}\nadmin \"10.0.0.5:9325\" socket=#false\n\
         state \"redis-sentinel\" sentinels=\"10.0.0.21:26379 10.0.0.22:26379\" service=\"mtac\" timeout=\"300ms\"\n\
         farm \"users\" kind=\"submission\" {{\n listen \"0.0.0.0:587\"\n \
         listen \"0.0.0.0:465\" tls=\"implicit\" proxy-from=\"10.0.0.0/24\"\n limits {{ message-size \"50MiB\"; errors 5; }}\n \
         tls certificate=\"{cert}\" key=\"{key}\"\n \
         auth mechanisms=\"PLAIN\" max-failures=3 cache=\"5m\" header-from=\"owned\" {{\n  \
         ldap url=\"ldap://10.0.0.20:389\" bind-dn=\"uid={{user}},ou=people,dc=acme,dc=example\"\n  \
         may-send-as \"alice\" \"sales@acme.example\"\n }}\n \
         ban after=\"auth.required\" duration=\"1h\" network=\"/24\"\n rate-limit messages=100 per=\"1h\"\n tarpit \"2s\"\n \
         screen {{ stress at=\"90%\" }}\n verdict-headers \"X-Spam-Flag\" action=\"rename\"\n \
         mime {{ forbid-extension \"exe\" }}\n relay {{\n  backend \"smtp://10.0.0.10:587\" tls=\"required\" name=\"mail.acme.example\"\n  \
         backend \"lmtp://10.0.0.11:24\" tls=\"off\"\n }}\n bare-line-ends \"normalize\"\n}}\n",
        cert = tls.join("example-cert.pem").display(),
        key = tls.join("example-key.pem").display(),
    );
    let first = print(&compile(&text, dir.path()), &Request { farm: None }).unwrap();
    let second = print(&compile(&first, dir.path()), &Request { farm: None }).unwrap();
    assert_eq!(first, second);
    assert!(first.contains("listen \"0.0.0.0:465\" tls=\"implicit\" proxy-from=\"10.0.0.0/24\""), "{first}");
}
