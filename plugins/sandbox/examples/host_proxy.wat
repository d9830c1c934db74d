;; Example WASM tool for the LibreFang sandbox (compiled from this text by wasmtime at load time).
;;
;; It forwards its input, {"method": "...", "params": {...}}, to the host as one host call and returns
;; the host's answer: {"ok": ...} or {"error": "..."}. Every call is checked against the calling
;; agent's capabilities and the tool's declared host_calls. Enable it with:
;;
;;   [[wasm_sandbox.tools]]
;;   name = "wasm_host"
;;   path = "/path/to/host_proxy.wat"
;;   description = "Call a sandbox host method (time_now, fs_read, fs_write, fs_list, agent_send)"
;;   input_schema = { type = "object", properties = { method = { type = "string" }, params = { type = "object" } }, required = ["method"] }
;;
;; ABI: exports memory, alloc(len) -> ptr and execute(ptr, len) -> (out_ptr << 32) | out_len;
;; imports librefang.host_call(ptr, len) -> (ptr << 32) | len.
(module
  (import "librefang" "host_call" (func $host_call (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  ;; Bump allocator: memory is never freed, the instance lives for one call only.
  (global $next (mut i32) (i32.const 1024))

  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    ;; 8-byte alignment
    (local.set $ptr (i32.and (i32.add (global.get $next) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    ;; grow when the end passes the current size (pages of 64 KiB); trap when the host refuses
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow (i32.add (i32.div_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
                                               (i32.const 65536))
                                    (i32.const 1)))
              (i32.const -1))
          (then unreachable))))
    (global.set $next (local.get $end))
    (local.get $ptr))

  (func (export "execute") (param $ptr i32) (param $len i32) (result i64)
    (call $host_call (local.get $ptr) (local.get $len)))
)
