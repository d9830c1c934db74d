;; Example WASM agent for LibreFang (compiled from this text by wasmtime when first used).
;;
;; Spawn it with a manifest such as:
;;
;;   name = "shouter"
;;   module = "wasm:shout_agent.wat"   # looked up in the agent's workspace, then in LIBREFANG_HOME/wasm
;;   [capabilities]
;;   tools = ["file_read", "file_list"]
;;
;; Every message to it (POST /api/agents/{id}/message, the SSE stream, the WebSocket, channels) runs
;; one call of `handle` in a fresh sandbox, under [wasm_sandbox] fuel, deadline and memory cap:
;;
;; - "/host <json>" forwards <json>, {"method": "...", "params": {...}}, as one host call and replies
;;   with the host's answer ({"ok": ...} or {"error": ..., "denied": true}); the host grants a method
;;   only when the agent's capabilities allow the same thing with tools (fs_read needs file_read ...);
;; - any other message is answered in upper case (ASCII letters).
;;
;; Agent ABI: exports memory, alloc(len) -> ptr and handle(ptr, len) -> (out_ptr << 32) | out_len;
;; the input is the message text (UTF-8), the output the reply text. Imports only
;; librefang.host_call(ptr, len) -> (ptr << 32) | len (no WASI).
(module
  (import "librefang" "host_call" (func $host_call (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "/host ")
  ;; Bump allocator: memory is never freed, the instance lives for one message only.
  (global $next (mut i32) (i32.const 1024))

  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local.set $ptr (i32.and (i32.add (global.get $next) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
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

  ;; 1 when the 6 bytes at $ptr are "/host " (the caller checked that 6 bytes are there)
  (func $is_host_command (param $ptr i32) (result i32)
    (local $i i32)
    (block $differs
      (loop $next_byte
        (br_if $differs (i32.ne (i32.load8_u (i32.add (local.get $ptr) (local.get $i)))
                                (i32.load8_u (i32.add (i32.const 16) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $next_byte (i32.lt_u (local.get $i) (i32.const 6))))
      (return (i32.const 1)))
    (i32.const 0))

  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32)
    (local $i i32)
    (local $c i32)
    (if (i32.ge_u (local.get $len) (i32.const 6))
      (then
        (if (call $is_host_command (local.get $ptr))
          (then
            (return (call $host_call (i32.add (local.get $ptr) (i32.const 6))
                                     (i32.sub (local.get $len) (i32.const 6))))))))
    (local.set $out (call $alloc (local.get $len)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (local.set $c (i32.sub (local.get $c) (i32.const 32)))))
        (i32.store8 (i32.add (local.get $out) (local.get $i)) (local.get $c))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32)) (i64.extend_i32_u (local.get $len))))
)
