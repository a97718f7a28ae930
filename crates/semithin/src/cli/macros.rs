// The output macros of the command line, shared by `semithin` (cli/mod.rs) and
// `semithin-initrd` (bin/semithin-initrd.rs), each of which defines `cli::out`.

/// `println!` that returns the write's error to the caller (`?` inside): a closed pipe is an
/// error to stop at, not a panic.
macro_rules! outln {
    () => {
        $crate::cli::out(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `eprintln!` that never panics: messages for people on stderr, which may be gone too.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
