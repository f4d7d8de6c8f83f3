//! A real slapd (Debian's package) on a loopback port, with a test directory under
//! dc=example,dc=test: shared by the integration tests and the directory benchmark.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A slapd of our own (Debian's package) with a test directory under dc=example,dc=test.
pub struct Slapd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Slapd {
    /// A slapd of our own on a loopback port, with a test directory of users. `None` (skipped)
    /// only outside CI when slapd is not installed.
    pub async fn start() -> Option<Slapd> {
        Slapd::start_with("", "").await
    }

    /// With more slapd.conf lines for the database (`limits`…) and more LDIF entries.
    pub async fn start_with(database_conf: &str, entries: &str) -> Option<Slapd> {
        if Command::new("slapd").arg("-VV").stderr(Stdio::null()).status().is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("CI=true and slapd is not installed");
            }
            eprintln!("slapd not available: LDAP tests skipped (they run in CI)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        let module_path = ["/usr/lib/ldap", "/usr/lib/x86_64-linux-gnu/ldap", "/usr/lib/openldap"]
            .into_iter()
            .find(|p| Path::new(p).join("back_mdb.so").exists() || Path::new(p).join("back_mdb.la").exists())
            .unwrap_or("/usr/lib/ldap");
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\ninclude /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath {module_path}\nmoduleload back_mdb\npidfile {pid}\n\
                 database mdb\nsuffix \"dc=example,dc=test\"\nrootdn \"cn=admin,dc=example,dc=test\"\nrootpw admin-secret\n\
                 directory {db}\nmaxsize 104857600\n{database_conf}\n",
                pid = dir.path().join("slapd.pid").display(),
                db = db.display()
            ),
        )
        .unwrap();
        let ldif = dir.path().join("users.ldif");
        std::fs::write(
            &ldif,
            format!(
                "dn: dc=example,dc=test\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: ou=people,dc=example,dc=test\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: uid=carol,ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: carol\ncn: Carol\nsn: C\n\
             mail: carol@example.test\nuserPassword: ldap-pass\n\n{entries}",
            ),
        )
        .unwrap();
        let added = Command::new("slapadd").arg("-f").arg(&conf).arg("-l").arg(&ldif).output().unwrap();
        assert!(added.status.success(), "slapadd: {}", String::from_utf8_lossy(&added.stderr));
        let mut slapd = Slapd { child: None, dir, port };
        slapd.run().await;
        Some(slapd)
    }

    pub async fn run(&mut self) {
        let child = Command::new("slapd")
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/", self.port))
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("slapd did not start");
    }

    /// The process id, to suspend it (SIGSTOP: a directory that hangs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
