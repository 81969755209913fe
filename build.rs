//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/folio/v1/folio.proto",
        "proto/folio/store/v1/store.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    // `src/http/web.rs` embeds every file of web/dist: rebuild when one is
    // added or removed, not only when an embedded one changes.
    println!("cargo:rerun-if-changed=web/dist");
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
