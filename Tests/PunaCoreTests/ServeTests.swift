import Foundation
import PunaCore
import XCTest

/// `puna serve` over loopback, driven by the real openai Python client (scripts/setup installs it
/// in .cache/venv-openai), curl and raw sockets.
final class ServeTests: XCTestCase {
    static let repo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
    static let base = repo.appendingPathComponent("models/demo/fortune-llama-q8_0.gguf").path
    static let adapter = repo.appendingPathComponent("models/demo/fortune-llama-qa-lora.gguf").path
    static let python = repo.appendingPathComponent(".cache/venv-openai/bin/python").path

    /// A running `puna serve` on a free port; stopped with SIGTERM by `stop()`.
    final class Server {
        let process = Process()
        let port: Int
        private let errPipe = Pipe()
        private var errText = ""
        private let lock = NSLock()

        /// `descriptorLimit` starts the server under `ulimit -n` (through sh, which then execs it).
        init(_ extra: [String], parallel: Int = 4, descriptorLimit: Int? = nil) throws {
            let arguments = ["serve", "-m", ServeTests.base, "--lora", "qa=\(ServeTests.adapter)", "--port", "0",
                             "--parallel", String(parallel), "-t", "2"] + extra
            if let descriptorLimit {
                process.executableURL = URL(fileURLWithPath: "/bin/sh")
                process.arguments = ["-c", "ulimit -n \(descriptorLimit) && exec \"$0\" \"$@\"", Fixtures.punaBinary.path] + arguments
            } else {
                process.executableURL = Fixtures.punaBinary
                process.arguments = arguments
            }
            process.standardError = errPipe
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            let handle = errPipe.fileHandleForReading
            var found: Int? = nil
            let deadline = Date().addingTimeInterval(60)
            while found == nil && Date() < deadline {
                let data = handle.availableData
                if data.isEmpty { break }
                errText += String(decoding: data, as: UTF8.self)
                if let r = errText.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                    found = Int(errText[r].split(separator: ":")[1])
                }
            }
            guard let found else { throw NSError(domain: "serve", code: 1, userInfo: [NSLocalizedDescriptionKey: "no port: \(errText)"]) }
            port = found
            // Keep draining stderr so the server never blocks on it.
            handle.readabilityHandler = { [weak self] h in
                let d = h.availableData
                guard let self else { return }
                self.lock.lock(); self.errText += String(decoding: d, as: UTF8.self); self.lock.unlock()
            }
        }

        var stderr: String { lock.lock(); defer { lock.unlock() }; return errText }

        /// SIGTERM, then the exit status.
        @discardableResult
        func stop() -> Int32 {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            errPipe.fileHandleForReading.readabilityHandler = nil
            let rest = errPipe.fileHandleForReading.readDataToEndOfFile()
            lock.lock(); errText += String(decoding: rest, as: UTF8.self); lock.unlock()
            return process.terminationStatus
        }

        deinit { if process.isRunning { process.terminate(); process.waitUntilExit() } }
    }

    /// Run a Python script (with the openai client available); returns its stdout, failing on a non-zero exit.
    func runPython(_ script: String, _ args: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: ServeTests.python) else {
            throw XCTSkip("no \(ServeTests.python): run scripts/setup")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ServeTests.python)
        p.arguments = ["-c", script] + args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        var errData = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        let text = String(decoding: outData, as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 0, "python failed: \(String(decoding: errData, as: UTF8.self))", file: file, line: line)
        return text
    }

    func curl(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = ["-s", "--max-time", "60"] + args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "not a JSON object: \(text)")
    }

    func testOpenAIClientChatCompletionsStreamingAndErrors() throws {
        let server = try Server([])
        let script = #"""
import json, sys, openai
c = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="unused", max_retries=0)
r = {}
r["models"] = [m.id for m in c.models.list().data]
chat = c.chat.completions.create(model="qa", messages=[{"role": "user", "content": "What is luck?"}], max_tokens=16, seed=5)
r["chat"] = chat.choices[0].message.content
r["chat_finish"] = chat.choices[0].finish_reason
r["chat_usage"] = [chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens]
comp = c.completions.create(model="fortune-llama-q8_0", prompt="Once upon a time", max_tokens=12, seed=9)
r["completion"] = comp.choices[0].text
r["completion_finish"] = comp.choices[0].finish_reason
parts = []
for ev in c.completions.create(model="fortune-llama-q8_0", prompt="Once upon a time", max_tokens=12, seed=9, stream=True):
    parts.append(ev.choices[0].text)
r["stream_completion"] = "".join(parts)
parts = []
for ev in c.chat.completions.create(model="qa", messages=[{"role": "user", "content": "What is luck?"}], max_tokens=16, seed=5, stream=True):
    if ev.choices and ev.choices[0].delta.content: parts.append(ev.choices[0].delta.content)
r["stream_chat"] = "".join(parts)
stopped = c.completions.create(model="fortune-llama-q8_0", prompt="Once upon a time", max_tokens=12, seed=9, stop=[" the"])
r["stop_text"] = stopped.choices[0].text
r["stop_finish"] = stopped.choices[0].finish_reason
errors = {}
for name, kw in [("temperature", {"temperature": -1}), ("n", {"n": 2}), ("max_tokens", {"max_tokens": 10**12}),
                 ("top_p", {"top_p": 1.5}), ("seed", {"seed": -3}), ("frequency_penalty", {"frequency_penalty": 2.5}),
                 ("presence_penalty", {"presence_penalty": -3})]:
    try:
        c.completions.create(model="fortune-llama-q8_0", prompt="hi", **kw)
        errors[name] = "accepted"
    except openai.BadRequestError as e:
        errors[name] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]
try:
    c.completions.create(model="nope", prompt="hi")
except openai.NotFoundError as e:
    errors["model"] = [e.status_code, e.body.get("param")]
try:
    c.chat.completions.create(model="qa", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    errors["image_part"] = "accepted"
except openai.BadRequestError as e:
    errors["image_part"] = [e.status_code, e.body.get("param")]
r["errors"] = errors
# Content as a list of text parts reads as their text joined by newlines.
parts = c.chat.completions.create(model="qa", max_tokens=16, seed=5, messages=[{"role": "user", "content": [
    {"type": "text", "text": "What is"}, {"type": "text", "text": "luck?"}]}])
joined = c.chat.completions.create(model="qa", max_tokens=16, seed=5, messages=[{"role": "user", "content": "What is\nluck?"}])
r["parts"] = [parts.choices[0].message.content, joined.choices[0].message.content]
# Penalties in range are accepted and change greedy text that repeats.
plain = c.completions.create(model="fortune-llama-q8_0", prompt="Once upon a time", max_tokens=48, temperature=0,
                             extra_body={"repeat_penalty": 1, "ignore_eos": True})
penalised = c.completions.create(model="fortune-llama-q8_0", prompt="Once upon a time", max_tokens=48, temperature=0,
                                 frequency_penalty=2, presence_penalty=2, extra_body={"repeat_penalty": 1, "ignore_eos": True})
r["penalties"] = [plain.choices[0].text, penalised.choices[0].text]
print(json.dumps(r))
"""#
        let r = try json(try runPython(script, [String(server.port)]))
        XCTAssertEqual(r["models"] as? [String], ["fortune-llama-q8_0", "qa"])
        let chat = try XCTUnwrap(r["chat"] as? String)
        XCTAssertFalse(chat.isEmpty)
        XCTAssertEqual(r["stream_chat"] as? String, chat, "a stream gives the same text as the whole response")
        XCTAssertEqual(r["stream_completion"] as? String, r["completion"] as? String)
        XCTAssertEqual(r["completion_finish"] as? String, "length")
        let usage = try XCTUnwrap(r["chat_usage"] as? [Int])
        XCTAssertEqual(usage[0] + usage[1], usage[2])
        let full = try XCTUnwrap(r["completion"] as? String)
        let stopText = try XCTUnwrap(r["stop_text"] as? String)
        if let cut = full.range(of: " the") {
            XCTAssertEqual(stopText, String(full[..<cut.lowerBound]))
            XCTAssertEqual(r["stop_finish"] as? String, "stop")
        }
        let errors = try XCTUnwrap(r["errors"] as? [String: Any])
        for name in ["temperature", "n", "max_tokens", "top_p", "seed", "frequency_penalty", "presence_penalty"] {
            XCTAssertEqual((errors[name] as? [Any])?.first as? Int, 400, name)
            XCTAssertEqual((errors[name] as? [Any])?.last as? String, name, "the error names the field")
        }
        XCTAssertEqual((errors["model"] as? [Any])?.first as? Int, 404)
        XCTAssertEqual((errors["image_part"] as? [Any])?.first as? Int, 400, "non-text content parts are refused")
        XCTAssertEqual((errors["image_part"] as? [Any])?.last as? String, "messages")
        let parts = try XCTUnwrap(r["parts"] as? [String])
        XCTAssertFalse(parts[0].isEmpty)
        XCTAssertEqual(parts[0], parts[1], "text parts read as their text joined by newlines")
        let penalties = try XCTUnwrap(r["penalties"] as? [String])
        XCTAssertNotEqual(penalties[0], penalties[1], "frequency/presence penalties change greedy text")
        XCTAssertEqual(server.stop(), 0)
    }

    /// A seeded request gives `puna run`'s text, alone and with 8 clients at once (base and adapter).
    func testSeededRequestsMatchPunaRunWithOneAndEightClients() throws {
        let prompt = "The secret of happiness"
        let (s1, baseOut, _) = try Fixtures.runPuna(["run", "-m", ServeTests.base, "-p", prompt, "-n", "24", "-s", "42", "--template", "raw", "-t", "2"])
        let (s2, tunedOut, _) = try Fixtures.runPuna(["run", "-m", ServeTests.base, "--lora", ServeTests.adapter, "-p", prompt, "-n", "24",
                                                   "-s", "42", "--template", "raw", "-t", "2"])
        XCTAssertEqual(s1, 0)
        XCTAssertEqual(s2, 0)
        // puna run ends its output with a newline of its own.
        let base = String(baseOut.dropLast(baseOut.hasSuffix("\n") ? 1 : 0))
        let tuned = String(tunedOut.dropLast(tunedOut.hasSuffix("\n") ? 1 : 0))
        XCTAssertNotEqual(base, tuned, "the adapter changes the text")
        let server = try Server([], parallel: 4)
        let script = #"""
import json, sys, openai
from concurrent.futures import ThreadPoolExecutor
c = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="unused", max_retries=0)
def one(i):
    model = "qa" if i % 2 else "fortune-llama-q8_0"
    r = c.completions.create(model=model, prompt=sys.argv[2], max_tokens=24, seed=42)
    return [model, r.choices[0].text]
single = [one(0), one(1)]
with ThreadPoolExecutor(8) as pool: many = list(pool.map(one, range(8)))
print(json.dumps({"single": single, "many": many}))
"""#
        let r = try json(try runPython(script, [String(server.port), prompt]))
        for group in ["single", "many"] {
            let results = try XCTUnwrap(r[group] as? [[String]])
            XCTAssertEqual(results.count, group == "single" ? 2 : 8)
            for pair in results {
                XCTAssertEqual(pair[1], pair[0] == "qa" ? tuned : base, "\(group) \(pair[0])")
            }
        }
        XCTAssertEqual(server.stop(), 0)
    }

    func testHostileHTTPLeavesTheServerUp() throws {
        // A 4096-token context lets one request run for seconds (the demo model decodes ~1000 tok/s).
        let server = try Server(["--timeout", "2", "--queue", "2", "-c", "4096"], parallel: 1)
        let script = #"""
import json, socket, sys, time, urllib.request
port = int(sys.argv[1])
def complete(out):
    # One whole response with a Content-Length (a kept-alive connection does not close after it).
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep: return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length": return len(body) >= int(value)
    return False
def raw(data, read=True, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    if read:
        try:
            while not complete(out):
                b = s.recv(65536)
                if not b: break
                out += b
        except socket.timeout:
            out += b"<timeout>"
    s.close()
    return out.decode("utf-8", "replace")
def status(text): return int(text.split(" ")[1]) if text.startswith("HTTP/1.1 ") else text[:40]
def post(body, extra=b""):
    return raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)
r = {}
# Idle connections and a slowloris sender are open while everything else runs.
idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
slow = socket.create_connection(("127.0.0.1", port)); slow.sendall(b"POST /v1/completions HTTP/1.1\r\n")
t0 = time.time()
r["malformed_line"] = status(raw(b"GARBAGE\r\n\r\n"))
r["lowercase_method"] = status(raw(b"get /health HTTP/1.1\r\n\r\n"))
r["big_header"] = status(raw(b"GET /health HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n"))
r["big_body"] = status(raw(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"))
r["bad_length"] = status(raw(b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n"))
r["chunked"] = status(raw(b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
r["no_length"] = status(raw(b"POST /v1/completions HTTP/1.1\r\n\r\n"))
r["bad_utf8"] = status(post(b'{"prompt": "\xff\xfe", "max_tokens": 2}'))
r["bad_json"] = status(post(b'{"prompt": '))
r["deep_json"] = status(post(b"[" * 5000 + b"]" * 5000))
r["not_object"] = status(post(b'[1, 2]'))
r["nan"] = status(post(b'{"prompt": "a", "temperature": NaN}'))
r["huge_number"] = status(post(b'{"prompt": "a", "max_tokens": 1e400}'))
r["float_tokens"] = status(post(b'{"prompt": "a", "max_tokens": 2.5}'))
r["wrong_type"] = status(post(b'{"prompt": 7}'))
r["unknown_path"] = status(raw(b"GET /nope HTTP/1.1\r\n\r\n"))
r["wrong_method"] = status(raw(b"DELETE /v1/models HTTP/1.1\r\n\r\n"))
ok = raw(b"GET /health HTTP/1.1\r\n\r\n")
r["health_during"] = status(ok)
r["fast_while_slow"] = time.time() - t0 < 2.0
# The slowloris sender is cut off after --timeout.
slow.settimeout(10)
start = time.time()
got = b""
try:
    while True:
        b = slow.recv(4096)
        if not b: break
        got += b
except Exception: pass
r["slowloris"] = [status(got.decode()), round(time.time() - t0, 1)]
for s in idle: s.close()
# A client that disconnects mid-generation frees the only sequence at once.
s = socket.create_connection(("127.0.0.1", port))
body = b'{"prompt": "Once upon a time", "max_tokens": 4000, "stream": true, "seed": 1, "ignore_eos": true}'
s.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
s.recv(100)
s.close()
time.sleep(0.3)
t1 = time.time()
done = post(b'{"prompt": "Hello", "max_tokens": 4, "seed": 1}')
r["after_disconnect"] = [status(done), int(time.time() - t1 < 5)]
# Queue full: one running, two waiting, the fourth gets 429 with Retry-After.
long = b'{"prompt": "Once upon a time", "max_tokens": 4000, "stream": true, "seed": 1, "ignore_eos": true}'
held = []
for _ in range(3):
    h = socket.create_connection(("127.0.0.1", port))
    h.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: " + str(len(long)).encode() + b"\r\n\r\n" + long)
    held.append(h)
time.sleep(0.3)
busy = post(b'{"prompt": "Hello", "max_tokens": 4}')
r["queue_full"] = [status(busy), int("Retry-After: 1" in busy)]
for h in held: h.close()
time.sleep(0.3)
m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
r["metrics"] = {l.split()[0]: float(l.split()[1]) for l in m.splitlines() if l and not l.startswith("#")}
print(json.dumps(r))
"""#
        let r = try json(try runPython(script, [String(server.port)]))
        let expected: [String: Int] = ["malformed_line": 400, "lowercase_method": 400, "big_header": 431, "big_body": 413,
                                       "bad_length": 400, "chunked": 411, "no_length": 411, "bad_utf8": 400, "bad_json": 400,
                                       "deep_json": 400, "not_object": 400, "nan": 400, "huge_number": 400, "float_tokens": 400,
                                       "wrong_type": 400, "unknown_path": 404, "wrong_method": 405, "health_during": 200]
        for (key, status) in expected { XCTAssertEqual(r[key] as? Int, status, key) }
        XCTAssertEqual(r["fast_while_slow"] as? Bool, true, "idle and slow clients do not hold up others")
        let slow = try XCTUnwrap(r["slowloris"] as? [Any])
        XCTAssertEqual(slow.first as? Int, 408)
        XCTAssertLessThan(try XCTUnwrap(slow.last as? Double), 6)
        XCTAssertEqual(r["after_disconnect"] as? [Int], [200, 1], "answered at once after a client left")
        XCTAssertEqual(r["queue_full"] as? [Int], [429, 1], "429 with Retry-After")
        let metrics = try XCTUnwrap(r["metrics"] as? [String: Double])
        XCTAssertGreaterThanOrEqual(metrics["puna_cancelled_total"] ?? 0, 4)
        XCTAssertGreaterThanOrEqual(metrics["puna_rejected_queue_full_total"] ?? 0, 1)
        XCTAssertEqual(metrics["puna_active_sequences"], 0, "closed clients left no sequence running")
        XCTAssertEqual(try curl(["http://127.0.0.1:\(server.port)/health"]), "{\"status\":\"ok\"}\n")
        XCTAssertEqual(server.stop(), 0)
    }

    func testAPIKeyAndNonLoopbackRefusal() throws {
        let (status, _, err) = try Fixtures.runPuna(["serve", "-m", ServeTests.base, "--host", "0.0.0.0", "--port", "0"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("not a loopback address") && err.contains("--api-key"), err)

        let keyFile = FileManager.default.temporaryDirectory.appendingPathComponent("puna-serve-key-\(getpid())")
        try "s3cret-key\n".write(to: keyFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: keyFile) }
        let server = try Server(["--api-key-file", keyFile.path])
        let url = "http://127.0.0.1:\(server.port)"
        let body = #"{"prompt": "Hi", "max_tokens": 2}"#
        func code(_ extra: [String]) throws -> String {
            try curl(["-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json", "-d", body] + extra + ["\(url)/v1/completions"])
        }
        XCTAssertEqual(try code([]), "401")
        XCTAssertEqual(try code(["-H", "Authorization: Bearer wrong"]), "401")
        XCTAssertEqual(try code(["-H", "Authorization: Bearer s3cret-key-longer"]), "401")
        XCTAssertEqual(try code(["-H", "Authorization: Bearer s3cret-key"]), "200")
        XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "\(url)/v1/models"]), "401")
        XCTAssertEqual(try curl(["-o", "/dev/null", "-w", "%{http_code}", "\(url)/health"]), "200")
        let script = #"""
import sys, openai
c = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="s3cret-key", max_retries=0)
print(len(c.completions.create(model="qa", prompt="Hi", max_tokens=3, seed=1).choices[0].text) > 0)
try:
    openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="bad", max_retries=0).models.list()
    print("accepted")
except openai.AuthenticationError as e:
    print(e.status_code)
"""#
        XCTAssertEqual(try runPython(script, [String(server.port)]), "True\n401\n")
        XCTAssertEqual(server.stop(), 0)
    }

    /// SIGTERM lets the requests in flight finish, then the server exits 0.
    func testSIGTERMDrainsInFlightRequests() throws {
        let server = try Server(["-c", "4096"], parallel: 2)
        let script = #"""
import json, os, signal, sys, threading, time, openai
c = openai.OpenAI(base_url=f"http://127.0.0.1:{sys.argv[1]}/v1", api_key="unused", max_retries=0)
out = {}
def go():
    r = c.completions.create(model="fortune-llama-q8_0", prompt="Once upon a time", max_tokens=2000, seed=3, extra_body={"ignore_eos": True})
    out["tokens"] = r.usage.completion_tokens
    out["finish"] = r.choices[0].finish_reason
    out["text"] = r.choices[0].text
t = threading.Thread(target=go); t.start()
time.sleep(0.3)
os.kill(int(sys.argv[2]), signal.SIGTERM)
t.join()
print(json.dumps(out))
"""#
        let r = try json(try runPython(script, [String(server.port), String(server.process.processIdentifier)]))
        XCTAssertEqual(r["finish"] as? String, "length", "the request in flight was answered in full")
        XCTAssertEqual(r["tokens"] as? Int, 2000)
        XCTAssertFalse((r["text"] as? String ?? "").isEmpty)
        XCTAssertEqual(server.stop(), 0)
        XCTAssertTrue(server.stderr.contains("stopping: finishing 1 requests"), server.stderr)
    }

    /// HTTP/1.1 keep-alive: several requests (plain, streamed as chunks, an API error) on one
    /// connection are all answered; the per-connection request limit and the idle timeout close it.
    func testKeepAliveAnswersSeveralRequestsOnOneConnection() throws {
        let server = try Server(["--keep-alive", "1", "--keep-alive-requests", "4"])
        let script = #"""
import http.client, json, socket, sys, time, openai
port = int(sys.argv[1])
r = {}
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def call(method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    return [resp.status, resp.getheader("Connection"), resp.getheader("Transfer-Encoding"), data.decode()]
first = call("POST", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8, "seed": 3})
local = conn.sock.getsockname()
stream = call("POST", "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8, "seed": 3, "stream": True})
same = conn.sock is not None and conn.sock.getsockname() == local
bad = call("POST", "/v1/completions", {"prompt": "hi", "temperature": 9})
fourth = call("GET", "/health")
r["statuses"] = [first[0], stream[0], bad[0], fourth[0]]
r["connection"] = [first[1], stream[1], bad[1], fourth[1]]
r["chunked"] = stream[2]
r["same_socket"] = same
r["texts"] = [json.loads(first[3])["choices"][0]["text"],
              "".join(json.loads(l[6:])["choices"][0]["text"] for l in stream[3].split("\n") if l.startswith("data: {"))]
conn.close()
def health(s):
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while not got.endswith(b"}\n"): got += s.recv(4096)
    return got
# The fourth request is the last one connection may make: the server closes it after.
s = socket.create_connection(("127.0.0.1", port), timeout=10)
heads = [health(s).split(b"\r\n\r\n")[0] for _ in range(4)]
r["closed_after_limit"] = [b"Connection: close" in heads[3], b"Connection: keep-alive" in heads[2], s.recv(1) == b""]
# An idle kept-alive connection is closed after --keep-alive seconds, silently.
s = socket.create_connection(("127.0.0.1", port), timeout=10)
health(s)
t0 = time.time()
rest = s.recv(4096)
r["idle_close"] = [rest.decode(), round(time.time() - t0, 1)]
# Two pipelined requests in one write are answered in order.
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"GET /health HTTP/1.1\r\n\r\nGET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n")
got = b""
while True:
    b = s.recv(65536)
    if not b: break
    got += b
r["pipelined"] = [got.count(b"HTTP/1.1 200 OK"), int(got.index(b'"status"') < got.index(b'"object":"list"'))]
# The openai client reuses its connection, and opens another once the server has closed one.
c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
for i in range(5):
    c.completions.create(model="fortune-llama-q8_0", prompt="Hi", max_tokens=2, seed=i)
r["openai_ok"] = True
print(json.dumps(r))
"""#
        let r = try json(try runPython(script, [String(server.port)]))
        XCTAssertEqual(r["statuses"] as? [Int], [200, 200, 400, 200])
        XCTAssertEqual(r["connection"] as? [String], ["keep-alive", "keep-alive", "keep-alive", "close"])
        XCTAssertEqual(r["chunked"] as? String, "chunked", "a kept-alive stream is sent chunked")
        XCTAssertEqual(r["same_socket"] as? Bool, true)
        let texts = try XCTUnwrap(r["texts"] as? [String])
        XCTAssertFalse(texts[0].isEmpty)
        XCTAssertEqual(texts[0], texts[1], "the streamed text equals the whole response")
        XCTAssertEqual(r["closed_after_limit"] as? [Bool], [true, true, true])
        let idle = try XCTUnwrap(r["idle_close"] as? [Any])
        XCTAssertEqual(idle.first as? String, "", "closed without a response")
        XCTAssertLessThan(try XCTUnwrap(idle.last as? Double), 3)
        XCTAssertEqual(r["pipelined"] as? [Int], [2, 1], "both answered, in order")
        XCTAssertEqual(r["openai_ok"] as? Bool, true)
        XCTAssertEqual(server.stop(), 0)
    }

    /// As many idle connections as the descriptor limit allows (at most 10,000): the server closes
    /// the excess (the longest idle first), keeps answering a normal request at once, and does not
    /// spin while they sit there. Then the same under a small `ulimit -n` for the server itself.
    func testTenThousandIdleConnections() throws {
        let script = #"""
import json, os, resource, select, socket, sys, time, urllib.request
port, pid, cap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = cap + 64
target = want if hard == resource.RLIM_INFINITY else min(want, hard)
if soft != resource.RLIM_INFINITY and soft < target:
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
n = min(cap, (soft if soft != resource.RLIM_INFINITY else want) - 64)
def cpu():
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None
r = {"n": n}
socks, failed = [], 0
t0 = time.time()
for i in range(n):
    try:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    except OSError:
        failed += 1
r["connect_failed"] = failed
r["open_seconds"] = round(time.time() - t0, 1)
time.sleep(1)
# Which of them has the server closed? (readable: EOF or a 503, then EOF)
poller = select.poll()
by_fd = {s.fileno(): s for s in socks}
for fd in by_fd: poller.register(fd, select.POLLIN)
closed = 0
for fd, ev in poller.poll(2000):
    s = by_fd[fd]
    s.setblocking(False)
    try:
        data = s.recv(4096)
        if data == b"" or data.startswith(b"HTTP/1.1 503"): closed += 1
    except (BlockingIOError, ConnectionResetError):
        closed += 1 if ev & (select.POLLHUP | select.POLLERR) else 0
r["closed_by_server"] = closed
# A normal request is answered at once while they all sit there.
t1 = time.time()
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read().decode()
r["health"] = [body, round(time.time() - t1, 2)]
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps({"prompt": "Hi", "max_tokens": 4, "seed": 1}).encode(),
                             headers={"Content-Type": "application/json"})
t1 = time.time()
done = json.loads(urllib.request.urlopen(req, timeout=30).read())
r["completion"] = [done["usage"]["completion_tokens"], round(time.time() - t1, 2)]
# No busy loop: CPU time over 2 idle seconds.
c0 = cpu(); time.sleep(2); c1 = cpu()
r["idle_cpu_seconds"] = None if c0 is None else round(c1 - c0, 2)
for s in socks: s.close()
time.sleep(0.5)
m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
r["metrics"] = {l.split()[0]: float(l.split()[1]) for l in m.splitlines() if l and not l.startswith("#")}
print(json.dumps(r))
"""#
        for (limit, maxConnections) in [(nil, 1000), (Optional(128), 256)] {
            let server = try Server(["--timeout", "60", "--max-connections", String(maxConnections)], descriptorLimit: limit)
            let r = try json(try runPython(script, [String(server.port), String(server.process.processIdentifier), "10000"]))
            let what = limit.map { "ulimit -n \($0)" } ?? "default limit"
            let n = try XCTUnwrap(r["n"] as? Int)
            // Where the test process cannot open many descriptors the check is weaker, not skipped.
            XCTAssertGreaterThan(n, 100, what)
            XCTAssertEqual(r["connect_failed"] as? Int, 0, what)
            // The server held at most its connection budget (under ulimit -n 128: 128 - 64 spare).
            let budget = limit.map { $0 - 64 } ?? maxConnections
            XCTAssertGreaterThanOrEqual(try XCTUnwrap(r["closed_by_server"] as? Int), n - budget, what)
            let health = try XCTUnwrap(r["health"] as? [Any])
            XCTAssertEqual(health.first as? String, "{\"status\":\"ok\"}\n", what)
            XCTAssertLessThan(try XCTUnwrap(health.last as? Double), 1.0, what)
            let completion = try XCTUnwrap(r["completion"] as? [Any])
            XCTAssertEqual(completion.first as? Int, 4, what)
            if let cpu = r["idle_cpu_seconds"] as? Double { XCTAssertLessThan(cpu, 0.3, "\(what): the server spins while idle") }
            let metrics = try XCTUnwrap(r["metrics"] as? [String: Double])
            XCTAssertGreaterThanOrEqual((metrics["puna_closed_idle_connections_total"] ?? 0) + (metrics["puna_refused_connections_total"] ?? 0),
                                        Double(n - budget), what)
            XCTAssertEqual(server.stop(), 0, what)
            if limit != nil { XCTAssertTrue(server.stderr.contains("the descriptor limit is 128"), server.stderr) }
        }
    }

    /// OpenAI's definition: logit -= frequency_penalty * count + presence_penalty * (count > 0),
    /// counting generated tokens only (not the prompt's).
    func testFrequencyAndPresencePenaltiesFollowOpenAI() {
        func logits(_ s: inout Sampler, _ values: [Float]) -> [Int32: Float] {
            var v = values
            let d = v.withUnsafeMutableBufferPointer { s.distribution($0) }
            XCTAssertEqual(v, values, "the logits are left as they were found")
            return Dictionary(uniqueKeysWithValues: d.map { ($0.id, $0.logit) })
        }
        let values: [Float] = [3, 2, 1, 0.5]
        let settings = SamplerSettings(temperature: 1, topK: 0, topP: 1, minP: 0, repeatPenalty: 1,
                                       frequencyPenalty: 0.5, presencePenalty: 0.25)
        var s = Sampler(settings)
        s.accept(0, generated: false)  // the prompt does not count
        XCTAssertEqual(logits(&s, values)[0], 3)
        s.accept(0, generated: true)
        s.accept(0, generated: true)
        s.accept(2, generated: true)
        let l = logits(&s, values)
        XCTAssertEqual(l[0], 3 - 0.5 * 2 - 0.25)
        XCTAssertEqual(l[1], 2)
        XCTAssertEqual(l[2], 1 - 0.5 - 0.25)
        s.reset()
        XCTAssertEqual(logits(&s, values)[0], 3, "reset forgets the counts")

        // With the repetition penalty as well: divided first, then reduced (llama.cpp's order),
        // and the logits still come back unchanged.
        var both = Sampler(SamplerSettings(temperature: 1, topK: 0, topP: 1, minP: 0, repeatPenalty: 2, repeatLastN: 64,
                                           frequencyPenalty: 1, presencePenalty: 0))
        both.accept(0, generated: true)
        XCTAssertEqual(logits(&both, values)[0], 3 / 2 - 1)
        // Greedy: a negative presence penalty favours repeating.
        var greedy = Sampler(SamplerSettings(temperature: 0, repeatPenalty: 1, presencePenalty: -2))
        greedy.accept(1, generated: true)
        var v = values
        XCTAssertEqual(v.withUnsafeMutableBufferPointer { greedy.sample($0) }, 1)
        XCTAssertEqual(SamplerSettings(), SamplerSettings(frequencyPenalty: 0, presencePenalty: 0), "off by default")
    }
}
