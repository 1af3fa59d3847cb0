//! Some third-party parsers panic on malformed input (the tokenizers crate `expect`s inside its
//! deserialisers: a syntax error in a tokenizer.json's "decoder", or a bad "Precompiled"
//! normalizer). A file from elsewhere must end in an error naming it, not a crash: [`contained`]
//! runs such a parser and turns a panic into an error message, without the panic being printed
//! (panics on other threads, or outside `contained`, print as always).

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside it becomes `Err(its message)`.
pub fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_and_values_pass_through() {
        assert_eq!(contained(|| 5), Ok(5));
        let err = contained(|| -> u8 { panic!("bad {}", 7) }).unwrap_err();
        assert_eq!(err, "bad 7");
        let err = contained(|| -> u8 { std::panic::panic_any(3u8) }).unwrap_err();
        assert_eq!(err, "unknown failure");
    }
}
