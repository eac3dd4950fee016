import CPuna
import PunaCore

/// `puna serve`: an OpenAI-compatible HTTP server with continuous batching.
///
/// Design: one thread, one poll() loop. Sockets are non-blocking; between polls the loop runs one
/// BatchScheduler step (a few milliseconds to tens of milliseconds on a board), so new requests
/// join the batch between steps and no client can block another: every connection that is still
/// sending its request has an absolute deadline (slowloris), a client that goes away has its slot
/// freed at once, and SIGTERM stops accepting, finishes the requests in flight and exits 0.
/// Connections are kept alive between requests (HTTP/1.1; streams are then sent chunked) until
/// they idle for --keep-alive seconds or have made --keep-alive-requests requests; when every
/// connection slot is taken, the longest-idle connection that has sent nothing is closed to make
/// room, so a flood of idle sockets cannot lock real clients out.
enum ServeCommand {
    static let specs: [FlagSpec] = CommonFlags.loading.filter { spec in
        !AdapterFlags.specs.contains { $0.names[0] == spec.names[0] }
    } + BatchCommand.adapterFlags + [
        FlagSpec(names: ["--host"], value: "ADDR", help: "address to listen on (default 127.0.0.1; another than loopback needs an API key)"),
        FlagSpec(names: ["--port"], value: "N", help: "TCP port (default 8080, 0 = any free port, printed at start)"),
        FlagSpec(names: ["-np", "--parallel"], value: "N", help: "sequences decoded together (default 4), each with a KV cache of -c positions"),
        FlagSpec(names: ["--api-key"], value: "KEY", help: "require 'Authorization: Bearer KEY' (all endpoints but /health)"),
        FlagSpec(names: ["--api-key-file"], value: "FILE", help: "the same, the key read from FILE (keeps it out of the process list)"),
        FlagSpec(names: ["--queue"], value: "N", help: "requests that may wait for a free sequence (default 64); more get 429"),
        FlagSpec(names: ["--timeout"], value: "SEC", help: "seconds a client has to send its whole request, and to read each response part (default 10)"),
        FlagSpec(names: ["--max-connections"], value: "N", help: "open connections at most (default 256); past it an idle one is closed, or the new one gets 503"),
        FlagSpec(names: ["--keep-alive"], value: "SEC", help: "seconds a connection may idle between requests (default 15, 0 = one request per connection)"),
        FlagSpec(names: ["--keep-alive-requests"], value: "N", help: "requests one connection may make before it is closed (default 100)"),
        FlagSpec(names: ["--alias"], value: "NAME", help: "model name of the base model in the API (default: the file name without .gguf)"),
    ] + CommonFlags.sampling.filter { !["-s", "--stop", "--ignore-eos"].contains($0.names[0]) } + [helpFlag]

    static let summary = """
        Serve the model over HTTP with OpenAI's API: POST /v1/chat/completions and /v1/completions \
        (with "stream": true as server-sent events), GET /v1/models (the base model and each --lora NAME; \
        a request's "model" picks one), /health and /metrics (Prometheus). Up to --parallel requests \
        are decoded together; the sampling flags are the defaults of requests that do not set a field.
        """

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "serve", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna serve -m MODEL [--lora NAME=PATH]… [--host ADDR] [--port N] [--parallel N] [--api-key KEY | --api-key-file FILE] [options]",
                         summary: summary, specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna serve' takes no positional argument '\(args.positionals[0])'") }
        _ = try args.require("-m")
        let host = args.string("--host") ?? "127.0.0.1"
        let port = try args.int("--port", range: 0...65535) ?? 8080
        let parallel = try args.int("-np", range: 1...256) ?? 4
        let queueLimit = try args.int("--queue", range: 0...100_000) ?? 64
        let timeout = try args.float("--timeout", range: 0.1...86400) ?? 10
        var maxConnections = try args.int("--max-connections", range: 1...65536) ?? 256
        let keepAlive = try args.int("--keep-alive", range: 0...3600) ?? 15
        let keepAliveRequests = try args.int("--keep-alive-requests", range: 1...1_000_000) ?? 100
        // Room for every connection plus the model's files, the listener and a reserve; past the
        // hard limit, serve fewer connections rather than fail in accept().
        let spareDescriptors = 64
        let descriptors = Int(puna_net_raise_descriptor_limit(Int32(maxConnections + spareDescriptors)))
        if descriptors > 0 && descriptors < maxConnections + spareDescriptors {
            let fitting = max(1, descriptors - spareDescriptors)
            errLine("puna serve: the descriptor limit is \(descriptors): serving \(fitting) connections at most, not \(maxConnections)")
            maxConnections = fitting
        }
        var apiKey: String? = args.string("--api-key")
        if let file = args.string("--api-key-file") {
            if apiKey != nil { throw PunaError("give either --api-key or --api-key-file, not both") }
            apiKey = try withInputBytes(file, maxBytes: 4096, limitNote: "the longest API key file") {
                (bytes: UnsafeBufferPointer<UInt8>) throws(PunaError) -> String in
                var text = String(decoding: bytes, as: UTF8.self)
                while let last = text.last, last == "\n" || last == "\r" || last == " " || last == "\t" { text.removeLast() }
                return text
            }
        }
        if let apiKey, apiKey.isEmpty { throw PunaError("the API key is empty (--api-key / --api-key-file)") }
        if puna_net_is_loopback(host) == 0 && apiKey == nil {
            throw PunaError("refusing to listen on \(host), which is not a loopback address, without an API key: give --api-key-file FILE (or --api-key KEY), or use --host 127.0.0.1")
        }

        var defaults = try BatchCommand.batchDefaults(args)
        defaults.maxTokens = try args.int("-n", range: -1...(1 << 24)) ?? 256
        let (model, _) = try CommonFlags.loadModel(args, contextDecidedLater: true)
        let chatTemplate = try ChatTemplate(gguf: model.gguf)
        let format = try PromptFormat.resolve(args.string("--template"), chatTemplate: chatTemplate, fallback: .raw, what: "flag --template")
        let adapters = try BatchCommand.loadAdapters(args, model: model)
        let board = try CommonFlags.boardProfile(args)
        let context = try args.int("-c", range: 1...(1 << 30)) ?? min(model.config.contextLength, board?.context ?? 2048)
        let cacheType = try BatchCommand.checkMemory(args, model: model, context: context, parallel: parallel, board: board,
                                                     adapters: adapters.map { $0.set })
        let scheduler = try BatchScheduler(model: model, parallel: parallel, contextLength: context, cacheType: cacheType)

        var baseName = args.string("--alias") ?? ""
        if baseName.isEmpty {
            let path = try args.require("-m")
            var name = Substring(path)
            if let slash = name.lastIndex(of: "/") { name = name[name.index(after: slash)...] }
            if name.hasSuffix(".gguf") { name = name.dropLast(5) }
            baseName = String(name)
        }
        for a in adapters where a.name == baseName {
            throw PunaError("flag --lora: adapter name '\(a.name)' is the base model's name (rename it, or set --alias)")
        }

        var error: Int32 = 0
        // A deep backlog absorbs bursts of connects between two loop turns (a full one drops SYNs,
        // which costs the client a 1 s retransmit).
        let listener = puna_net_listen(host, Int32(port), 1024, &error)
        guard listener >= 0 else {
            throw PunaError("cannot listen on \(host) port \(port): \(String(cString: puna_strerror(error)))")
        }
        puna_net_install_signals()
        let server = ServeServer(listener: listener, scheduler: scheduler, format: format, defaults: defaults,
                                 adapters: adapters, baseName: baseName, apiKey: apiKey, queueLimit: queueLimit,
                                 timeoutNs: Int64(Double(timeout) * 1e9), maxConnections: maxConnections,
                                 keepAliveSeconds: keepAlive, keepAliveRequests: keepAliveRequests)
        let names = ([baseName] + adapters.map { $0.name }).joined(separator: ", ")
        errLine("puna serve: listening on http://\(host.contains(":") ? "[\(host)]" : host):\(puna_net_local_port(listener)) "
                + "(models: \(names); parallel \(parallel), context \(context), template \(format.name))")
        server.run()
        puna_net_close(listener)
        errLine("puna serve: stopped after \(server.metrics.requests) requests (\(server.metrics.errors) errors), "
                + "\(scheduler.tokensGenerated) tokens generated")
        return 0
    }
}

/// Counters behind /metrics.
struct ServeMetrics {
    var requests = 0
    var errors = 0
    var completed = 0
    var cancelled = 0
    var rejectedQueueFull = 0
    var refusedConnections = 0
    var closedIdle = 0
    var promptTokens = 0
    var completionTokens = 0
}

/// One client connection.
final class ServeConnection {
    enum Phase { case reading, generating, writing }
    let fd: Int32
    var phase = Phase.reading
    /// Bytes received and not yet parsed (a pipelined next request may wait here while one runs).
    var input: [UInt8] = []
    var output: [UInt8] = []
    var sent = 0
    /// Reading: the whole request must have arrived by then (or, idle between requests, the
    /// connection is closed then). Writing: the client must read by then.
    var deadline: Int64
    /// Requests parsed on this connection.
    var served = 0
    /// The connection stays open after the current response.
    var keepAlive = false
    /// The current response is a chunked stream.
    var chunked = false
    /// When the connection last became idle (accepted, or a response finished): the longest-idle
    /// one is closed first when connections run out.
    var idleSince: Int64
    // The request being generated.
    var jobKey = ""
    var responseID = ""
    var modelName = ""
    var isChat = false
    var isStream = false
    var streamedBytes = 0
    var created: Int64 = 0

    init(fd: Int32, deadline: Int64) {
        self.fd = fd
        self.deadline = deadline
        idleSince = puna_now_ns()
    }

    var pendingOutput: Int { output.count - sent }
    /// Waiting for a request and has sent none of it: may be closed without losing anything.
    var isIdle: Bool { phase == .reading && input.isEmpty }
}

final class ServeServer {
    let listener: Int32
    let scheduler: BatchScheduler
    let format: PromptFormat
    let defaults: BatchDefaults
    let adapters: [(name: String, set: AdapterSet)]
    let baseName: String
    let apiKey: [UInt8]?
    let queueLimit: Int
    let timeoutNs: Int64
    let maxConnections: Int
    let keepAliveSeconds: Int
    let keepAliveRequests: Int
    let limits = HTTPLimits()
    /// Input kept per connection: one whole request (a pipelined one waits in it).
    var inputCap: Int { limits.maxHeadBytes + limits.maxBodyBytes + 4 }
    /// A slow reader's unsent output is capped; past it the connection is dropped.
    let maxPendingOutput = 8 << 20

    var metrics = ServeMetrics()
    var connections: [Int32: ServeConnection] = [:]
    /// Jobs waiting for a free sequence, oldest first.
    var queue: [(job: BatchJob, fd: Int32)] = []
    /// Job key -> connection of the jobs admitted to the scheduler.
    var running: [String: Int32] = [:]
    var nextID = 1
    var stopping = false
    /// accept() failed for another reason than an empty backlog: the listener is left out of
    /// poll until then, so a persistent error cannot spin the loop.
    var acceptPausedUntil: Int64 = 0
    /// Kept-alive connections whose input already holds (part of) the next request.
    var reparse: [ServeConnection] = []
    let startedNs = puna_now_ns()

    init(listener: Int32, scheduler: BatchScheduler, format: PromptFormat, defaults: BatchDefaults,
         adapters: [(name: String, set: AdapterSet)], baseName: String, apiKey: String?, queueLimit: Int,
         timeoutNs: Int64, maxConnections: Int, keepAliveSeconds: Int, keepAliveRequests: Int) {
        self.listener = listener
        self.scheduler = scheduler
        self.format = format
        self.defaults = defaults
        self.adapters = adapters
        self.baseName = baseName
        self.apiKey = apiKey.map { Array($0.utf8) }
        self.queueLimit = queueLimit
        self.timeoutNs = timeoutNs
        self.maxConnections = maxConnections
        self.keepAliveSeconds = keepAliveSeconds
        self.keepAliveRequests = keepAliveRequests
    }

    func run() {
        var readBuffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            if puna_net_stop_requested() != 0 && !stopping { beginStopping() }
            if stopping && connections.isEmpty && queue.isEmpty && scheduler.isIdle { return }
            admitQueued()

            var fds: [Int32] = []
            var events: [Int32] = []
            let listening = !stopping && puna_now_ns() >= acceptPausedUntil
            if listening {
                fds.append(listener)
                events.append(Int32(PUNA_POLL_IN))
            }
            for (fd, c) in connections {
                fds.append(fd)
                events.append(Int32(PUNA_POLL_IN) | (c.pendingOutput > 0 ? Int32(PUNA_POLL_OUT) : 0))
            }
            var ready = [Int32](repeating: 0, count: fds.count)
            let busy = !scheduler.isIdle || !reparse.isEmpty
            _ = puna_net_poll(fds, events, &ready, Int32(fds.count), busy ? 0 : (acceptPausedUntil > 0 && !listening ? 20 : 100))

            for (k, fd) in fds.enumerated() where ready[k] != 0 {
                if fd == listener && listening {
                    acceptAll()
                    continue
                }
                guard let c = connections[fd] else { continue }
                if ready[k] & Int32(PUNA_POLL_IN | PUNA_POLL_HUP) != 0 {
                    readFrom(c, buffer: &readBuffer)
                }
                if connections[fd] != nil && ready[k] & Int32(PUNA_POLL_OUT) != 0 { flush(c) }
            }
            let waiting = reparse
            reparse = []
            for c in waiting where connections[c.fd] === c { parseInput(c) }
            expireDeadlines()
            admitQueued()
            if !scheduler.isIdle { stepModel() }
        }
    }

    func beginStopping() {
        stopping = true
        errLine("puna serve: stopping: finishing \(running.count + queue.count) requests in flight")
        for (_, c) in connections where c.phase == .reading { close(c) }
    }

    func acceptAll() {
        while true {
            let fd = puna_net_accept(listener)
            if fd == -1 { return }
            if fd == -3 {  // out of descriptors: that connection was closed unanswered
                metrics.refusedConnections += 1
                continue
            }
            if fd < 0 {
                acceptPausedUntil = puna_now_ns() + 50_000_000
                return
            }
            if connections.count >= maxConnections && !closeLongestIdle() {
                // Every connection is busy: a short 503, then close; the socket is fresh so the write fits.
                metrics.refusedConnections += 1
                let e = APIError(status: 503, message: "too many open connections", type: "server_error")
                let bytes = httpHead(status: 503, contentType: "application/json", contentLength: e.body.count) + e.body
                _ = bytes.withUnsafeBufferPointer { puna_net_write(fd, $0.baseAddress, Int64($0.count)) }
                puna_net_close(fd)
                continue
            }
            connections[fd] = ServeConnection(fd: fd, deadline: puna_now_ns() + timeoutNs)
        }
    }

    /// Close the connection that has idled longest without sending a byte, to make room for a
    /// new one. False when every connection is busy.
    func closeLongestIdle() -> Bool {
        var oldest: ServeConnection? = nil
        for (_, c) in connections where c.isIdle {
            if oldest == nil || c.idleSince < oldest!.idleSince { oldest = c }
        }
        guard let oldest else { return false }
        metrics.closedIdle += 1
        close(oldest)
        return true
    }

    func readFrom(_ c: ServeConnection, buffer: inout [UInt8]) {
        while true {
            let n = buffer.withUnsafeMutableBufferPointer { puna_net_read(c.fd, $0.baseAddress, Int64($0.count)) }
            if n == -1 { break }
            if n <= 0 {  // end of stream or error: the client is gone
                close(c)
                return
            }
            // A kept-alive connection's next request gets the full time to arrive from its first byte.
            if c.isIdle && c.served > 0 { c.deadline = puna_now_ns() + timeoutNs }
            // Past one request's worth the bytes are dropped; parsing then fails with 413 or 400.
            let room = inputCap - c.input.count
            if room > 0 { c.input.append(contentsOf: buffer[0..<min(Int(n), room)]) }
        }
        parseInput(c)
    }

    /// Parse and start the request in a reading connection's input, once it is complete.
    func parseInput(_ c: ServeConnection) {
        guard c.phase == .reading, !c.input.isEmpty else { return }
        let parsed: HTTPParse
        do throws(APIError) {
            parsed = try parseHTTPRequest(c.input, limits: limits)
            if case .incomplete = parsed, c.input.count >= inputCap {
                throw APIError(status: 413, message: "the request is too large")
            }
        } catch {
            // The framing cannot be trusted past a malformed request: answer, then close.
            c.keepAlive = false
            respondError(c, error)
            return
        }
        guard case .done(let request, let consumed) = parsed else { return }
        c.input.removeFirst(consumed)
        metrics.requests += 1
        c.served += 1
        c.keepAlive = keepAliveSeconds > 0 && request.wantsKeepAlive && c.served < keepAliveRequests && !stopping
        do throws(APIError) { try handle(request, c) } catch { respondError(c, error) }
    }

    func expireDeadlines() {
        let now = puna_now_ns()
        for (_, c) in connections {
            switch c.phase {
            case .reading where now > c.deadline && c.isIdle && c.served > 0:
                close(c)  // a kept-alive connection idled out: nothing to answer
            case .reading where now > c.deadline:
                // A stalled or slow sender (slowloris): tell it, and do not wait for it to read.
                c.keepAlive = false
                respondError(c, APIError(status: 408, message: "the request did not arrive within the time limit"))
                if connections[c.fd] != nil { close(c) }
            case .writing where now > c.deadline:
                close(c)
            default:
                break
            }
        }
    }

    // MARK: responses

    func send(_ c: ServeConnection, _ bytes: [UInt8]) {
        // A closed connection's descriptor may already belong to a new one.
        guard connections[c.fd] === c else { return }
        c.output.append(contentsOf: bytes)
        if c.pendingOutput > maxPendingOutput { close(c); return }
        flush(c)
    }

    func flush(_ c: ServeConnection) {
        while c.pendingOutput > 0 {
            let n = c.output.withUnsafeBufferPointer { puna_net_write(c.fd, $0.baseAddress! + c.sent, Int64(c.pendingOutput)) }
            if n == -1 { return }
            if n < 0 { close(c); return }
            c.sent += Int(n)
            c.deadline = puna_now_ns() + timeoutNs
        }
        c.output = []
        c.sent = 0
        guard c.phase == .writing else { return }
        guard c.keepAlive && !stopping else { close(c); return }
        // The response is out: wait for the next request on this connection.
        c.phase = .reading
        c.chunked = false
        c.streamedBytes = 0
        c.jobKey = ""
        let now = puna_now_ns()
        c.idleSince = now
        c.deadline = now + (c.input.isEmpty ? Int64(keepAliveSeconds) * 1_000_000_000 : timeoutNs)
        if !c.input.isEmpty { reparse.append(c) }  // pipelined: parsed on the next loop turn
    }

    func respond(_ c: ServeConnection, status: Int, contentType: String, body: [UInt8], extra: String = "") {
        c.phase = .writing
        c.deadline = puna_now_ns() + timeoutNs
        send(c, httpHead(status: status, contentType: contentType, contentLength: body.count, extra: extra,
                         keepAliveSeconds: c.keepAlive ? keepAliveSeconds : 0) + body)
    }

    /// One piece of a stream's body (framed as a chunk on a kept-alive connection).
    func sendStream(_ c: ServeConnection, _ bytes: [UInt8]) {
        send(c, c.chunked ? httpChunk(bytes) : bytes)
    }

    /// The last piece of a stream; the connection then closes, or waits for the next request.
    func endStream(_ c: ServeConnection, _ bytes: [UInt8]) {
        guard connections[c.fd] === c else { return }
        c.phase = .writing
        c.deadline = puna_now_ns() + timeoutNs
        send(c, c.chunked ? httpChunk(bytes) + Array("0\r\n\r\n".utf8) : bytes)
    }

    func respondError(_ c: ServeConnection, _ e: APIError) {
        metrics.errors += 1
        respond(c, status: e.status, contentType: "application/json", body: e.body, extra: e.headers)
    }

    func respondJSON(_ c: ServeConnection, _ j: JSONWriter) {
        respond(c, status: 200, contentType: "application/json", body: j.bytes + [0x0A])
    }

    /// Close a connection; a job it was waiting for is dropped, freeing its sequence at once.
    func close(_ c: ServeConnection) {
        guard connections.removeValue(forKey: c.fd) != nil else { return }
        if c.phase == .generating {
            if running.removeValue(forKey: c.jobKey) != nil { scheduler.cancel(key: c.jobKey) }
            queue.removeAll { $0.fd == c.fd }
            metrics.cancelled += 1
        }
        puna_net_close(c.fd)
    }

    // MARK: routing

    func handle(_ request: HTTPRequest, _ c: ServeConnection) throws(APIError) {
        if request.path != "/health", let key = apiKey {
            let given = Array((request.header("authorization") ?? "").utf8)
            let expected = Array("Bearer ".utf8) + key
            let ok = given.withUnsafeBufferPointer { g in
                expected.withUnsafeBufferPointer { e in
                    puna_constant_time_equal(g.baseAddress, g.count, e.baseAddress, e.count) != 0
                }
            }
            guard ok else {
                throw APIError(status: 401, message: "missing or wrong API key (send 'Authorization: Bearer KEY')", code: "invalid_api_key")
            }
        }
        let routes: [(String, String)] = [("GET", "/health"), ("GET", "/metrics"), ("GET", "/v1/models"),
                                           ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")]
        guard routes.contains(where: { $0.1 == request.path }) else {
            throw APIError(status: 404, message: "no endpoint \(clip(request.path))", code: "not_found")
        }
        guard routes.contains(where: { $0.0 == request.method && $0.1 == request.path }) else {
            throw APIError(status: 405, message: "\(request.path) does not take \(clip(request.method, 16))")
        }
        switch request.path {
        case "/health":
            var j = JSONWriter()
            j.beginObject(); j.field("status", stopping ? "stopping" : "ok"); j.endObject()
            respondJSON(c, j)
        case "/metrics":
            respond(c, status: 200, contentType: "text/plain; version=0.0.4", body: Array(metricsText().utf8))
        case "/v1/models":
            var j = JSONWriter()
            j.beginObject()
            j.field("object", "list")
            j.key("data")
            j.beginArray()
            for name in [baseName] + adapters.map({ $0.name }) {
                j.beginObject()
                j.field("id", name)
                j.field("object", "model")
                j.field("created", Int(puna_net_unix_time()))
                j.field("owned_by", "puna")
                j.endObject()
            }
            j.endArray()
            j.endObject()
            respondJSON(c, j)
        default:
            try startCompletion(request, c, chat: request.path == "/v1/chat/completions")
        }
    }

    func metricsText() -> String {
        var s = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: String) {
            s += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        metric("puna_requests_total", "counter", "HTTP requests received", "\(metrics.requests)")
        metric("puna_request_errors_total", "counter", "requests answered with an error", "\(metrics.errors)")
        metric("puna_completions_total", "counter", "completions finished", "\(metrics.completed)")
        metric("puna_cancelled_total", "counter", "completions dropped because the client went away", "\(metrics.cancelled)")
        metric("puna_rejected_queue_full_total", "counter", "requests refused with 429", "\(metrics.rejectedQueueFull)")
        metric("puna_refused_connections_total", "counter", "connections refused (503, or closed for lack of descriptors)", "\(metrics.refusedConnections)")
        metric("puna_closed_idle_connections_total", "counter", "idle connections closed to make room for new ones", "\(metrics.closedIdle)")
        metric("puna_prompt_tokens_total", "counter", "prompt tokens of finished completions", "\(metrics.promptTokens)")
        metric("puna_completion_tokens_total", "counter", "generated tokens of finished completions", "\(metrics.completionTokens)")
        metric("puna_queue_depth", "gauge", "requests waiting for a free sequence", "\(queue.count)")
        metric("puna_active_sequences", "gauge", "sequences being decoded", "\(scheduler.activeCount)")
        metric("puna_open_connections", "gauge", "open client connections", "\(connections.count)")
        let seconds = Double(scheduler.decodeNanoseconds) / 1e9
        metric("puna_decode_tokens_per_second", "gauge", "decode rate over the steps without prompt rows",
               fixed(seconds > 0 ? Double(scheduler.decodeTokens) / seconds : 0, 2))
        metric("puna_uptime_seconds", "gauge", "seconds since the server started", fixed(Double(puna_now_ns() - startedNs) / 1e9, 1))
        return s
    }

    // MARK: completions

    func startCompletion(_ request: HTTPRequest, _ c: ServeConnection, chat: Bool) throws(APIError) {
        if stopping { throw APIError(status: 503, message: "the server is shutting down", type: "server_error") }
        let body: JSONValue
        do throws(PunaError) { body = try JSONValue.parse(bytes: request.body) } catch {
            throw APIError(status: 400, message: "the body is not valid JSON: \(clip(error.message, 120))")
        }
        guard body.object != nil else { throw APIError(status: 400, message: "the body must be a JSON object") }
        var (job, stream, modelName) = try prepareJob(body, chat: chat)
        if queue.count >= queueLimit && !scheduler.hasFreeSlot {
            metrics.rejectedQueueFull += 1
            throw APIError(status: 429, message: "the server is busy (\(queue.count) requests waiting); retry later",
                           code: "rate_limit_exceeded", headers: "Retry-After: 1\r\n")
        }
        job.key = "job-\(nextID)"
        c.responseID = (chat ? "chatcmpl-" : "cmpl-") + "\(nextID)"
        nextID += 1
        c.jobKey = job.key
        c.modelName = modelName
        c.isChat = chat
        c.isStream = stream
        c.created = puna_net_unix_time()
        c.phase = .generating
        queue.append((job, c.fd))
        if stream {
            // A stream has no length: chunked framing lets the connection outlive it (HTTP/1.1 only).
            if request.version != "HTTP/1.1" { c.keepAlive = false }
            c.chunked = c.keepAlive
            send(c, httpHead(status: 200, contentType: "text/event-stream", contentLength: nil,
                             keepAliveSeconds: c.keepAlive ? keepAliveSeconds : 0, chunked: c.chunked))
            if chat { sendChunk(c, content: nil, role: true, finish: nil, usage: nil) }
        }
        admitQueued()
    }

    func admitQueued() {
        while scheduler.hasFreeSlot && !queue.isEmpty {
            let (job, fd) = queue.removeFirst()
            guard connections[fd] != nil else { continue }
            do throws(PunaError) {
                try scheduler.admit(job)
                running[job.key] = fd
            } catch {
                if let c = connections[fd] { failGenerating(c, error.message) }
            }
        }
    }

    func failGenerating(_ c: ServeConnection, _ message: String) {
        metrics.errors += 1
        if c.isStream {
            // Headers are out already: report in the stream, then end it.
            var j = JSONWriter()
            j.beginObject(); j.key("error"); j.beginObject(); j.field("message", message); j.field("type", "server_error")
            j.endObject(); j.endObject()
            endStream(c, Array("data: ".utf8) + j.bytes + Array("\n\ndata: [DONE]\n\n".utf8))
        } else {
            respondError(c, APIError(status: 500, message: message, type: "server_error"))
        }
    }

    func stepModel() {
        let done: [BatchCompletion]
        do throws(PunaError) { done = try scheduler.step() } catch {
            // A failed step leaves every running job without a result: fail them all.
            for (key, fd) in running {
                scheduler.cancel(key: key)
                if let c = connections[fd] { failGenerating(c, error.message) }
            }
            running = [:]
            return
        }
        for completion in done {
            guard let fd = running.removeValue(forKey: completion.key), let c = connections[fd] else { continue }
            finish(c, completion)
        }
        // Streams: send what each running job has settled since the last step.
        for (key, fd) in running {
            guard let c = connections[fd], c.isStream, let settled = scheduler.settledText(key: key),
                  settled.count > c.streamedBytes else { continue }
            let delta = String(decoding: settled[c.streamedBytes...], as: UTF8.self)
            c.streamedBytes = settled.count
            sendChunk(c, content: delta, role: false, finish: nil, usage: nil)
        }
    }

    static func finishName(_ reason: FinishReason) -> String {
        switch reason {
        case .eos, .stop: return "stop"
        case .length, .contextFull: return "length"
        }
    }

    func writeUsage(_ j: inout JSONWriter, _ done: BatchCompletion) {
        j.key("usage")
        j.beginObject()
        j.field("prompt_tokens", done.promptTokens)
        j.field("completion_tokens", done.generatedTokens)
        j.field("total_tokens", done.promptTokens + done.generatedTokens)
        j.endObject()
    }

    func finish(_ c: ServeConnection, _ done: BatchCompletion) {
        metrics.completed += 1
        metrics.promptTokens += done.promptTokens
        metrics.completionTokens += done.generatedTokens
        let reason = ServeServer.finishName(done.finishReason)
        if c.isStream {
            let bytes = Array(done.text.utf8)
            let rest = bytes.count > c.streamedBytes ? String(decoding: bytes[c.streamedBytes...], as: UTF8.self) : ""
            if !rest.isEmpty { sendChunk(c, content: rest, role: false, finish: nil, usage: nil) }
            endStream(c, chunk(c, content: nil, role: false, finish: reason, usage: done) + Array("data: [DONE]\n\n".utf8))
            return
        }
        var j = JSONWriter()
        j.beginObject()
        j.field("id", c.responseID)
        j.field("object", c.isChat ? "chat.completion" : "text_completion")
        j.field("created", Int(c.created))
        j.field("model", c.modelName)
        j.key("choices")
        j.beginArray()
        j.beginObject()
        j.field("index", 0)
        if c.isChat {
            j.key("message")
            j.beginObject(); j.field("role", "assistant"); j.field("content", done.text); j.endObject()
        } else {
            j.field("text", done.text)
            j.key("logprobs"); j.null()
        }
        j.field("finish_reason", reason)
        j.endObject()
        j.endArray()
        writeUsage(&j, done)
        j.endObject()
        respondJSON(c, j)
    }

    /// One server-sent event of a stream.
    func sendChunk(_ c: ServeConnection, content: String?, role: Bool, finish: String?, usage: BatchCompletion?) {
        sendStream(c, chunk(c, content: content, role: role, finish: finish, usage: usage))
    }

    func chunk(_ c: ServeConnection, content: String?, role: Bool, finish: String?, usage: BatchCompletion?) -> [UInt8] {
        var j = JSONWriter()
        j.beginObject()
        j.field("id", c.responseID)
        j.field("object", c.isChat ? "chat.completion.chunk" : "text_completion")
        j.field("created", Int(c.created))
        j.field("model", c.modelName)
        j.key("choices")
        j.beginArray()
        j.beginObject()
        j.field("index", 0)
        if c.isChat {
            j.key("delta")
            j.beginObject()
            if role { j.field("role", "assistant") }
            if let content { j.field("content", content) }
            j.endObject()
        } else {
            j.field("text", content ?? "")
            j.key("logprobs"); j.null()
        }
        j.key("finish_reason")
        if let finish { j.value(finish) } else { j.null() }
        j.endObject()
        j.endArray()
        if let usage { writeUsage(&j, usage) }
        j.endObject()
        return Array("data: ".utf8) + j.bytes + Array("\n\n".utf8)
    }

    // MARK: request fields

    /// The text of a message's content parts (`[{"type": "text", "text": ...}]`); any other kind
    /// of part (images, audio, files) is refused, as this server reads text only.
    static func textOfParts(_ parts: [JSONValue], message i: Int) throws(APIError) -> String {
        var texts: [String] = []
        for (k, part) in parts.enumerated() {
            guard part.object != nil, let type = part["type"]?.string else {
                throw APIError.badField("messages", "message \(i), content part \(k): not an object with a string 'type'")
            }
            guard type == "text" else {
                throw APIError.badField("messages", "message \(i), content part \(k): type '\(clip(type, 32))' is not supported (text only)")
            }
            guard let text = part["text"]?.string else {
                throw APIError.badField("messages", "message \(i), content part \(k): 'text' must be a string")
            }
            texts.append(text)
        }
        return texts.joined(separator: "\n")
    }

    /// The job a request body asks for; every field is type- and range-checked.
    func prepareJob(_ r: JSONValue, chat: Bool) throws(APIError) -> (BatchJob, stream: Bool, model: String) {
        func number(_ key: String, _ range: ClosedRange<Double>) throws(APIError) -> Float? {
            guard let v = r[key], !v.isNull else { return nil }
            guard let d = v.double, d.isFinite else { throw APIError.badField(key, "'\(key)' must be a number") }
            guard range.contains(d) else {
                throw APIError.badField(key, "'\(key)' is \(clip(v.numberText ?? "", 32)), outside \(fixed(range.lowerBound, 2))…\(fixed(range.upperBound, 2))")
            }
            return Float(d)
        }
        func integer(_ key: String, _ range: ClosedRange<Int>) throws(APIError) -> Int? {
            guard let v = r[key], !v.isNull else { return nil }
            guard let i = v.int else { throw APIError.badField(key, "'\(key)' must be an integer") }
            guard range.contains(i) else { throw APIError.badField(key, "'\(key)' is \(i), outside \(range.lowerBound)…\(range.upperBound)") }
            return i
        }

        var modelName = baseName
        var adapterSet: AdapterSet? = nil
        if let v = r["model"], !v.isNull {
            guard let name = v.string else { throw APIError.badField("model", "'model' must be a string") }
            if let a = adapters.first(where: { $0.name == name }) {
                adapterSet = a.set
                modelName = name
            } else if name != baseName && !name.isEmpty {
                let known = ([baseName] + adapters.map { $0.name }).joined(separator: ", ")
                throw APIError(status: 404, message: "the model '\(clip(name))' does not exist (models: \(known))",
                               param: "model", code: "model_not_found")
            }
        }
        var stream = false
        if let v = r["stream"], !v.isNull {
            guard let b = v.bool else { throw APIError.badField("stream", "'stream' must be true or false") }
            stream = b
        }
        if let n = try integer("n", Int.min...Int.max), n != 1 { throw APIError.badField("n", "only 'n': 1 is supported") }
        for key in ["logprobs", "logit_bias", "tools", "response_format", "best_of", "echo", "suffix"] {
            guard let v = r[key], !v.isNull else { continue }
            if v.bool == false { continue }
            throw APIError.badField(key, "'\(key)' is not supported")
        }

        var stopAtEOS = true
        if let v = r["ignore_eos"], !v.isNull {  // llama.cpp's server extension, for benchmarks and tests
            guard let b = v.bool else { throw APIError.badField("ignore_eos", "'ignore_eos' must be true or false") }
            stopAtEOS = !b
        }
        var sampler = defaults.sampler
        if let v = try number("temperature", 0...2) { sampler.temperature = v }
        if let v = try number("top_p", 0...1) { sampler.topP = v }
        if let v = try integer("top_k", 0...(1 << 24)) { sampler.topK = v }
        if let v = try number("min_p", 0...1) { sampler.minP = v }
        if let v = try number("repeat_penalty", 0.01...100) { sampler.repeatPenalty = v }
        if let v = try integer("repeat_last_n", -1...(1 << 24)) { sampler.repeatLastN = v }
        // OpenAI's range; they count the generated tokens only (see SamplerSettings).
        if let v = try number("frequency_penalty", -2...2) { sampler.frequencyPenalty = v }
        if let v = try number("presence_penalty", -2...2) { sampler.presencePenalty = v }
        if let v = r["seed"], !v.isNull {
            guard let seed = v.uint64 else { throw APIError.badField("seed", "'seed' must be an integer in 0…18446744073709551615") }
            sampler.seed = seed
        } else {
            sampler.seed = UInt64(truncatingIfNeeded: puna_now_ns())
        }
        let context = scheduler.contextLength
        var maxTokens = defaults.maxTokens
        for key in ["max_tokens", "max_completion_tokens"] {
            if let v = try integer(key, 0...context) { maxTokens = v }
        }

        var stops: [String] = []
        if let v = r["stop"], !v.isNull {
            if let s = v.string {
                stops = [s]
            } else if let list = v.array {
                guard list.count <= 16 else { throw APIError.badField("stop", "'stop' may hold at most 16 strings") }
                for item in list {
                    guard let s = item.string else { throw APIError.badField("stop", "'stop' must be a string or a list of strings") }
                    stops.append(s)
                }
            } else {
                throw APIError.badField("stop", "'stop' must be a string or a list of strings")
            }
            for s in stops where s.utf8.count > 256 { throw APIError.badField("stop", "a stop string is longer than 256 bytes") }
        }

        let text: String
        var promptFormat = PromptFormat.builtin(.raw)
        if chat {
            guard let messages = r["messages"] else { throw APIError.badField("messages", "'messages' is required") }
            guard var list = messages.array, !list.isEmpty else {
                throw APIError.badField("messages", "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
            }
            for (i, m) in list.enumerated() {
                // Content given as a list of parts: the text parts, joined by newlines, stand for it.
                if let parts = m["content"]?.array, let members = m.object {
                    let content = try ServeServer.textOfParts(parts, message: i)
                    list[i] = .object(members.map { $0.key == "content" ? (key: "content", value: .string(content)) : $0 })
                }
            }
            for (i, m) in list.enumerated() {
                guard m.object != nil, let role = m["role"]?.string else {
                    throw APIError.badField("messages", "message \(i) is not an object with a string 'role'")
                }
                guard ["system", "user", "assistant", "developer"].contains(role) else {
                    throw APIError.badField("messages", "message \(i): unsupported role '\(clip(role, 32))'")
                }
                guard m["content"]?.string != nil else {
                    throw APIError.badField("messages", "message \(i): 'content' must be a string or a list of text parts")
                }
            }
            promptFormat = format
            do throws(PunaError) {
                switch format {
                case .chat(let template): text = try template.render(messages: .array(list), addGenerationPrompt: true)
                case .builtin(let template): text = try TemplateCommand.renderBuiltin(template, list, addGenerationPrompt: true)
                }
            } catch {
                throw APIError.badField("messages", "the chat template failed on these messages: \(clip(error.message, 160))")
            }
        } else {
            guard let v = r["prompt"] else { throw APIError.badField("prompt", "'prompt' is required") }
            if let s = v.string { text = s }
            else if let list = v.array, list.count == 1, let s = list[0].string { text = s }
            else { throw APIError.badField("prompt", "'prompt' must be a string (or a list of one string)") }
        }
        let tokenizer = scheduler.model.tokenizer
        do throws(PunaError) { try tokenizer.checkCanFit(textBytes: text.utf8.count, context: context, what: "the prompt") } catch {
            throw APIError(status: 400, message: error.message, param: chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        let tokens = promptFormat.tokens(text, tokenizer: tokenizer)
        guard !tokens.isEmpty else { throw APIError.badField(chat ? "messages" : "prompt", "the prompt is empty") }
        guard tokens.count < context else {
            throw APIError(status: 400, message: "the prompt has \(tokens.count) tokens; this server's context holds \(context)",
                           param: chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        var job = BatchJob(key: "", promptTokens: tokens, maxTokens: maxTokens, sampler: sampler,
                           stopStrings: stops + promptFormat.stopStrings, stopAtEOS: stopAtEOS, adapters: adapterSet)
        job.adapters = adapterSet
        return (job, stream, modelName)
    }
}
