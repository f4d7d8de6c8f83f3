//! Operator tools that need no ruleset: `mtac hash-password` (an Argon2id PHC string for a
//! submission farm's `user` entries) and `mtac man-pages` (roff pages from the clap
//! definitions, for packagers).

use clap::{Args, CommandFactory};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

/// OWASP's minimum for Argon2id, and the `argon2` crate's default: below it `mtac check` warns
/// (`mtac::auth::weak-hash`), so this tool never makes such a hash.
const MIN_MEMORY_KIB: u32 = 19_456;
const MIN_PASSES: u32 = 2;
/// A password longer than this is a pasted file, not a password.
const MAX_PASSWORD_BYTES: usize = 4096;

#[derive(Args, Debug)]
pub struct HashPasswordArgs {
    /// Print a policy line, `user "NAME" hash="…"`, ready for a farm's `auth { … }` block
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Memory cost in KiB (at least 19456)
    #[arg(long = "memory", value_name = "KIB", default_value_t = MIN_MEMORY_KIB)]
    memory_kib: u32,
    /// Number of passes (at least 2)
    #[arg(long, value_name = "N", default_value_t = MIN_PASSES)]
    passes: u32,
    /// Degree of parallelism
    #[arg(long, value_name = "N", default_value_t = 1)]
    lanes: u32,
}

/// Read the password (from the terminal without echo, asked twice; or one line of stdin) and
/// print its Argon2id PHC string.
pub fn hash_password(args: &HashPasswordArgs) -> Result<ExitCode, String> {
    if args.memory_kib < MIN_MEMORY_KIB || args.passes < MIN_PASSES {
        return Err(format!(
            "--memory {} --passes {}: weaker than Argon2id m={MIN_MEMORY_KIB} t={MIN_PASSES} (OWASP's minimum, which `mtac check` asks for)",
            args.memory_kib, args.passes
        ));
    }
    if let Some(name) = &args.user {
        if name.is_empty() || name.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
            return Err(format!("--user {name:?}: a user name has no quotes, backslashes or control characters"));
        }
    }
    let password = read_password()?;
    let params = argon2::Params::new(args.memory_kib, args.passes, args.lanes, None)
        .map_err(|e| format!("Argon2 parameters: {e}"))?;
    let hash = phc(&password, params)?;
    match &args.user {
        Some(name) => println!("user \"{name}\" hash=\"{hash}\""),
        None => println!("{hash}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn read_password() -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| format!("reading the password: {e}"))?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| format!("reading the password: {e}"))?;
        if first != again {
            return Err("the two passwords differ".to_owned());
        }
        first
    } else {
        // One line of stdin, as `printf %s PASSWORD |` or `echo PASSWORD |` give it.
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_PASSWORD_BYTES as u64 + 3)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        let line = text.strip_suffix('\n').map_or(text.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
        if line.contains('\n') {
            return Err("stdin holds more than one line: give the password alone".to_owned());
        }
        line.to_owned()
    };
    if password.is_empty() {
        return Err("the password is empty".to_owned());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("the password is longer than {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(password)
}

/// The PHC string of `password` under a fresh 16-byte salt from the kernel.
fn phc(password: &str, params: argon2::Params) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| format!("salt: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    argon.hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| format!("hashing: {e}"))
}

#[derive(Args, Debug)]
pub struct ManPagesArgs {
    /// The directory to write mtac.1 and one mtac-COMMAND.1 per command into
    dir: PathBuf,
}

/// Write the man pages: `mtac.1`, and `mtac-check.1` and so on for every command.
pub fn man_pages(args: &ManPagesArgs) -> Result<ExitCode, String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let mut root = crate::cli::Cli::command();
    root.build();
    let mut pages = vec![("mtac".to_owned(), root.clone())];
    for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("mtac-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, command) in pages {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .date(env!("MTAC_BUILD_DATE"))
            .render(&mut page)
            .map_err(|e| format!("{name}.1: {e}"))?;
        let path = args.dir.join(format!("{name}.1"));
        std::fs::write(&path, page).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
