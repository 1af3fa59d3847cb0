//! Where outputs may go: an output must never be, contain or lie inside one of the inputs it is
//! made from (writing it would destroy them), compared by real location (links resolved).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `path` made absolute with its links resolved, also for a path that does not exist yet: the
/// longest existing ancestor is resolved and the rest appended (`..` in the rest is applied
/// lexically, which is right there: a missing folder cannot be a link).
pub fn resolved(path: &Path) -> Option<PathBuf> {
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().ok()?.join(path) };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for c in rest.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return Some(out);
        }
        rest.push(existing.components().next_back()?);
        existing = existing.parent()?;
    }
}

/// Refuses an output that is, contains or lies inside one of `inputs` (each with what it is, for
/// the message).
pub fn check_apart(out: &Path, out_what: &str, inputs: &[(&str, &Path)]) -> Result<()> {
    let Some(o) = resolved(out) else { return Ok(()) };
    for (what, input) in inputs {
        let Some(i) = resolved(input) else { continue };
        let relation = if o == i {
            "is"
        } else if o.starts_with(&i) {
            "lies inside"
        } else if i.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        return Err(Error::Request(format!(
            "{out_what} {} {relation} the {what} {}: writing there would destroy the input; choose another place",
            out.display(),
            input.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_apart_from_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("delta");
        std::fs::create_dir(&input).unwrap();
        let inputs = [("delta folder", input.as_path())];
        for (out, relation) in [
            (input.clone(), "is"),
            (input.join("."), "is"),
            (input.join("merged"), "lies inside"),
            (input.join("a/../b"), "lies inside"),
            (dir.path().to_path_buf(), "contains"),
            (dir.path().join("x/../delta"), "is"),
        ] {
            let err = check_apart(&out, "--out", &inputs).unwrap_err().to_string();
            assert!(err.contains(relation) && err.contains("delta folder"), "{}: {err}", out.display());
        }
        check_apart(&dir.path().join("merged"), "--out", &inputs).unwrap();
        check_apart(&dir.path().join("delta-merged"), "--out", &inputs).unwrap();
        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            let err = check_apart(&link.join("out"), "--out", &inputs).unwrap_err().to_string();
            assert!(err.contains("lies inside"), "{err}");
        }
    }
}
