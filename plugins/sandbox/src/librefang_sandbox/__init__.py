"""LibreFang sandbox plugin: shell/process tools under an exec policy, and WASM tools in wasmtime."""
