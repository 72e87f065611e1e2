//! Compiles the Mesos v1 schema (`proto/`) with protox (pure Rust, no protoc needed) into prost
//! types, and saves the descriptor set that the JSON mapping reflects over.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let files = [
        "mesos/v1/mesos.proto",
        "mesos/v1/scheduler/scheduler.proto",
        "mesos/v1/master/master.proto",
        "mesos/v1/quota/quota.proto",
        "mesos/v1/maintenance/maintenance.proto",
        "mesos/v1/allocator/allocator.proto",
        "mesos/v1/executor/executor.proto",
    ];
    let fds = match protox::compile(files, ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("compiling the Mesos v1 schema failed: {e:?}"),
    };
    fs::write(out.join("mesos_v1.fds"), fds.encode_to_vec()).expect("write descriptor set");
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    config.compile_fds(fds).expect("prost code generation");
    println!("cargo:rerun-if-changed=proto");
}
