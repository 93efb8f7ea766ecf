//! Python tools for tests (real clients from PyPI, such as py-consul), each in its own venv
//! under the target directory, installed on first use. A test fails loudly when that is
//! impossible.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python of a venv in `dir` where `import module` works, installing `package` (a pip
/// requirement like `py-consul==1.8.0`) into it if needed.
pub fn venv_with(dir: &Path, package: &str, module: &str) -> PathBuf {
    let python = dir.join("bin/python");
    let has_it = |py: &Path| {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has_it(&python) {
        return python;
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(dir)
        .status()
        .expect("python3 is required for this test (apt-get install python3 python3-venv)");
    assert!(
        status.success(),
        "cannot create a venv at {}",
        dir.display()
    );
    let out = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", package])
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip install {package} failed (needs PyPI): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        has_it(&python),
        "{package} installed but `import {module}` fails"
    );
    python
}
