import CPuna

/// A record's id: a string or an integer, as the input wrote it, or, when it had none, its line
/// number, kept apart from the given ids (a line without an id never clashes with an `"id": 3`).
public enum BatchID: Equatable {
    case string(String)
    case number(Int)
    /// No id given: the record is known by its 1-based line (output: `"id": null, "line": N`).
    case line(Int)

    /// Unique text per id; "7", 7 and line 7 are different ids.
    public var key: String {
        switch self {
        case .string(let s): return "s:" + s
        case .number(let n): return "n:\(n)"
        case .line(let n): return "l:\(n)"
        }
    }

    /// The id as JSON, for messages.
    public var json: String {
        var j = JSONWriter()
        write(&j)
        return j.string
    }

    func write(_ j: inout JSONWriter) {
        switch self {
        case .string(let s): j.value(s)
        case .number(let n): j.value(n)
        case .line: j.null()
        }
    }

    /// The id of a parsed record or output line: a string or an integer; nil for anything else.
    init?(_ value: JSONValue) {
        if let s = value.string { self = .string(s); return }
        if let n = value.int, value.numberText.map({ !$0.contains(".") && !$0.contains("e") && !$0.contains("E") }) ?? false {
            self = .number(n)
            return
        }
        return nil
    }
}

/// One non-blank line of a batch input file.
public struct BatchRequest {
    /// 1-based line number in the file.
    public let line: Int
    /// 0-based index among the records (blank lines are not records); `--shard K/N` keeps index % N == K.
    public let index: Int
    public let id: BatchID
    /// The line as read. It is parsed again when the record runs: the parsed form of every line of a
    /// large file at once would take many times the file's size.
    let text: [UInt8]
    /// Why the line cannot run (not a JSON object, too long, a bad id); nil for a good line.
    public let inputError: String?
    /// Field names the line has that no request reads (a typo like "max_token").
    public let unknownFields: [String]

    /// The line's object; nil when `inputError` is set.
    public var fields: JSONValue? {
        guard inputError == nil else { return nil }
        do throws(PunaError) { return try JSONValue.parse(bytes: text) } catch { return nil }
    }

    /// The adapter the record asks for, as written (also on its error record).
    public var adapterName: String? { fields?["adapter"]?.string }
}

/// Settings a record falls back on when it does not set them (from the command line).
public struct BatchDefaults {
    /// nil ("auto"): the model file's chat template when it has one, else raw for a `prompt` and
    /// alpaca for an `instruction`.
    public var template: PromptTemplate? = nil
    /// The model file's `tokenizer.chat_template`, used for "auto".
    public var chatTemplate: ChatTemplate? = nil
    public var system: String? = nil
    public var maxTokens: Int = 128
    public var sampler = SamplerSettings(seed: 0)
    /// Used when the record has no `stop`; the template's own stop strings are always added.
    public var stopStrings: [String] = []
    public var stopAtEOS = true

    public init() {}
}

/// The record fields `puna batch` reads; anything else (an Alpaca data set's `output`, say) is ignored.
public let batchRecordFields = ["id", "prompt", "instruction", "input", "system", "template", "max_tokens", "temperature",
                                "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed", "stop", "adapter"]

extension BatchRequest {
    /// Turn the record into a job: template, prompt tokens, sampling, stops. `adapters` are the
    /// names an `adapter` field may use; the returned name is nil for the base model. Errors
    /// name the field at fault (they become the record's `error`).
    /// A prompt that cannot fit in `contextLength` tokens is refused before it is tokenized.
    public func prepare(defaults: BatchDefaults, tokenizer: Tokenizer, adapters: [String],
                        contextLength: Int = Int.max) throws(PunaError) -> (job: BatchJob, adapter: String?) {
        if let inputError { throw PunaError(inputError) }
        guard let r = fields else { throw PunaError("not a JSON object") }

        func text(_ key: String) throws(PunaError) -> String? {
            guard let v = r[key], !v.isNull else { return nil }
            guard let s = v.string else { throw PunaError("field '\(key)' must be a string") }
            return s
        }
        func number(_ key: String, _ range: ClosedRange<Double>) throws(PunaError) -> Float? {
            guard let v = r[key], !v.isNull else { return nil }
            guard let d = v.double else { throw PunaError("field '\(key)' must be a number") }
            guard range.contains(d) else { throw PunaError("field '\(key)': \(v.numberText ?? "") is out of range \(rangeText(range))") }
            return Float(d)
        }
        func integer(_ key: String, _ range: ClosedRange<Int>) throws(PunaError) -> Int? {
            guard let v = r[key], !v.isNull else { return nil }
            guard let i = v.int else { throw PunaError("field '\(key)' must be an integer") }
            guard range.contains(i) else { throw PunaError("field '\(key)': \(i) is out of range \(range.lowerBound)…\(range.upperBound)") }
            return i
        }

        let prompt = try text("prompt"), instruction = try text("instruction")
        if prompt != nil && instruction != nil { throw PunaError("give either 'prompt' or 'instruction', not both") }
        guard let body = prompt ?? instruction else { throw PunaError("the record needs a 'prompt' or an 'instruction'") }
        let fallback: PromptTemplate = instruction != nil ? .alpaca : .raw
        var template: PromptFormat
        if let t = defaults.template { template = .builtin(t) }
        else { template = try PromptFormat.resolve(nil, chatTemplate: defaults.chatTemplate, fallback: fallback, what: "") }
        if let name = try text("template") {
            template = try PromptFormat.resolve(name, chatTemplate: defaults.chatTemplate, fallback: fallback, what: "field 'template'")
        }
        let rendered = try template.render(prompt: body, input: try text("input"), system: try text("system") ?? defaults.system)

        var sampler = defaults.sampler
        if let v = try number("temperature", 0...100) { sampler.temperature = v }
        if let v = try integer("top_k", 0...(1 << 24)) { sampler.topK = v }
        if let v = try number("top_p", 0...1) { sampler.topP = v }
        if let v = try number("min_p", 0...1) { sampler.minP = v }
        if let v = try number("repeat_penalty", 0...100) { sampler.repeatPenalty = v }
        if let v = try integer("repeat_last_n", -1...(1 << 24)) { sampler.repeatLastN = v }
        if let v = r["seed"], !v.isNull {
            guard let seed = v.uint64 else { throw PunaError("field 'seed' must be an integer in 0…18446744073709551615") }
            sampler.seed = seed
        }

        var stops = defaults.stopStrings
        if let v = r["stop"], !v.isNull {
            if let s = v.string {
                stops = [s]
            } else if let list = v.array {
                stops = []
                for item in list {
                    guard let s = item.string else { throw PunaError("field 'stop' must be a list of strings") }
                    stops.append(s)
                }
            } else {
                throw PunaError("field 'stop' must be a list of strings")
            }
        }
        stops += template.stopStrings

        var adapter: String? = nil
        if let name = try text("adapter") {
            guard adapters.contains(name) else {
                let known = adapters.isEmpty ? "no adapters were given with --lora" : "adapters given with --lora: " + adapters.joined(separator: ", ")
                throw PunaError("field 'adapter': unknown adapter '\(name)' (\(known))")
            }
            adapter = name
        }

        try tokenizer.checkCanFit(textBytes: rendered.utf8.count, context: contextLength, what: "the prompt")
        let tokens = template.tokens(rendered, tokenizer: tokenizer)
        let job = BatchJob(key: id.key, promptTokens: tokens,
                           maxTokens: try integer("max_tokens", -1...(1 << 24)) ?? defaults.maxTokens,
                           sampler: sampler, stopStrings: stops, stopAtEOS: defaults.stopAtEOS)
        return (job, adapter)
    }
}

private func rangeText(_ r: ClosedRange<Double>) -> String {
    func t(_ d: Double) -> String {
        var j = JSONWriter()
        j.value(d, decimals: d == d.rounded() ? 0 : 2)
        return j.string
    }
    return t(r.lowerBound) + "…" + t(r.upperBound)
}

/// Reading batch input files.
public enum BatchInput {
    /// The largest input file: it is read whole (records keep their line's bytes).
    public static let maxInputBytes = 512 << 20
    /// The longest line one record may take: more text than any context holds (a line is parsed
    /// whole, at several times its size), so a longer one is that record's error.
    public static let maxLineBytes = 4 << 20

    /// Every record of a JSONL file ("-" reads standard input). A line that is not a JSON object
    /// becomes a record with `inputError`; ids must be unique across the whole file (resume skips
    /// ids found in the output, so a repeated id would be lost), else the whole file is refused.
    public static func read(path: String) throws(PunaError) -> [BatchRequest] {
        try withInputBytes(path, maxBytes: maxInputBytes, limitNote: "the largest batch input; split it into several files") {
            (bytes: UnsafeBufferPointer<UInt8>) throws(PunaError) -> [BatchRequest] in
            try parse(bytes, source: path)
        }
    }

    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>, source: String,
                             maxLineBytes: Int = BatchInput.maxLineBytes) throws(PunaError) -> [BatchRequest] {
        var records: [BatchRequest] = []
        var firstLine: [String: Int] = [:]
        let failure = forEachLine(bytes) { (lineNumber: Int, line: UnsafeBufferPointer<UInt8>) -> PunaError? in
            guard !isBlank(line) else { return nil }
            var problem: String? = nil
            var id = BatchID.line(lineNumber)
            var unknown: [String] = []
            if line.count > maxLineBytes {
                problem = "the line has \(line.count) bytes, more than the \(formatBytes(maxLineBytes)) one record may take"
            } else {
                do throws(PunaError) {
                    let value = try JSONValue.parse(bytes: line)
                    if let keys = value.keys {
                        if let v = value["id"], !v.isNull {
                            if let given = BatchID(v) { id = given } else { problem = "field 'id' must be a string or an integer" }
                        }
                        unknown = keys.filter { !batchRecordFields.contains($0) }
                    } else {
                        problem = "the line is not a JSON object"
                    }
                } catch {
                    problem = "invalid JSON: " + (error.message.hasPrefix("JSON: ") ? String(error.message.dropFirst(6)) : error.message)
                }
            }
            if let earlier = firstLine[id.key] {
                return PunaError("\(source): line \(lineNumber): id \(id.json) is already used on line \(earlier) (ids must be unique: a rerun skips the ids already in the output)")
            }
            firstLine[id.key] = lineNumber
            records.append(BatchRequest(line: lineNumber, index: records.count, id: id,
                                        text: problem == nil ? Array(line) : [], inputError: problem, unknownFields: unknown))
            return nil
        }
        if let failure { throw failure }
        return records
    }
}

/// Calls `body` with each line (1-based number, bytes without "\n" or a trailing "\r") until it returns an error.
private func forEachLine(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (Int, UnsafeBufferPointer<UInt8>) -> PunaError?) -> PunaError? {
    var start = 0
    var number = 1
    while start < bytes.count {
        var end = start
        while end < bytes.count && bytes[end] != 0x0A { end += 1 }
        var stop = end
        if stop > start && bytes[stop - 1] == 0x0D { stop -= 1 }
        if let e = body(number, UnsafeBufferPointer(rebasing: bytes[start..<stop])) { return e }
        start = end + 1
        number += 1
    }
    return nil
}

private func isBlank(_ line: UnsafeBufferPointer<UInt8>) -> Bool {
    for b in line where b != 0x20 && b != 0x09 && b != 0x0D { return false }
    return true
}

/// One output line.
public struct BatchResult {
    public var id: BatchID
    public var text: String
    /// stop, length, eos or error.
    public var finishReason: String
    public var tokensIn: Int
    public var tokensOut: Int
    public var adapter: String?
    public var milliseconds: Int
    public var error: String?

    public init(id: BatchID, text: String, finishReason: String, tokensIn: Int, tokensOut: Int,
                adapter: String?, milliseconds: Int, error: String? = nil) {
        self.id = id
        self.text = text
        self.finishReason = finishReason
        self.tokensIn = tokensIn
        self.tokensOut = tokensOut
        self.adapter = adapter
        self.milliseconds = milliseconds
        self.error = error
    }

    /// The record of a request that could not run.
    public static func failure(_ id: BatchID, _ message: String, adapter: String? = nil) -> BatchResult {
        BatchResult(id: id, text: "", finishReason: "error", tokensIn: 0, tokensOut: 0, adapter: adapter,
                    milliseconds: 0, error: message)
    }

    /// The output name of a finish reason: a full context counts as running out of length.
    public static func reasonName(_ reason: FinishReason) -> String {
        reason == .contextFull ? "length" : reason.rawValue
    }

    /// The JSON object and its newline.
    public var jsonLine: [UInt8] {
        var j = JSONWriter()
        j.beginObject()
        j.key("id"); id.write(&j)
        j.field("text", text)
        j.field("finish_reason", finishReason)
        j.field("tokens_in", tokensIn)
        j.field("tokens_out", tokensOut)
        if case .line(let n) = id { j.field("line", n) }
        j.key("adapter")
        if let adapter { j.value(adapter) } else { j.null() }
        j.field("ms", milliseconds)
        if let error { j.field("error", error) }
        j.endObject()
        return j.bytes + [0x0A]
    }
}

/// The output file of a batch, opened for appending. On open it repairs what a crash can leave
/// (the last line cut short: it is truncated away) and collects the ids already done. Each record
/// then goes out whole with one write and an fsync, so after `append` returns the line survives a
/// crash or power loss, and a line is either entirely there or (cut short) repaired on the next open.
public final class BatchOutput {
    public let path: String
    /// Ids (`BatchID.key`) of the records already in the file.
    public private(set) var doneKeys: Set<String> = []
    /// Complete records found on open.
    public private(set) var existingRecords = 0
    /// Bytes of a cut-short last line removed on open (0 when the file was intact).
    public private(set) var repairedBytes = 0
    private let fd: Int32

    public init(path: String) throws(PunaError) {
        self.path = path
        let kind = puna_file_kind(path)
        guard kind == Int32(PUNA_FILE_MISSING.rawValue) || kind == Int32(PUNA_FILE_REGULAR.rawValue) else {
            throw PunaError("\(path): the output must be a regular file (it is appended to, and repaired after a crash), not a \(kind == Int32(PUNA_FILE_DIRECTORY.rawValue) ? "directory" : "device, FIFO or socket")")
        }
        if kind == Int32(PUNA_FILE_REGULAR.rawValue) {
            // Mapped, not read: the output of a long run can be large.
            let existing = try MappedFile(path: path)
            let all = UnsafeBufferPointer(start: existing.baseAddress?.assumingMemoryBound(to: UInt8.self), count: existing.count)
            // Everything after the last newline is a record whose write never finished.
            var complete = all.count
            while complete > 0 && all[complete - 1] != 0x0A { complete -= 1 }
            var found: Set<String> = []
            var count = 0
            let problem = forEachLine(UnsafeBufferPointer(rebasing: all[0..<complete])) { (number: Int, line: UnsafeBufferPointer<UInt8>) -> PunaError? in
                guard !isBlank(line) else { return nil }
                var id: BatchID? = nil
                do throws(PunaError) {
                    let value = try JSONValue.parse(bytes: line)
                    if let v = value["id"] { id = BatchID(v) }
                    if id == nil, value["id"]?.isNull ?? false, let n = value["line"]?.int { id = .line(n) }
                } catch {}
                guard let id else {
                    return PunaError("\(path): line \(number) is not a record of puna batch (no id); refusing to append to this file")
                }
                found.insert(id.key)
                count += 1
                return nil
            }
            if let problem { throw problem }
            doneKeys = found
            existingRecords = count
            if complete < all.count {
                let e = puna_truncate(path, Int64(complete))
                guard e == 0 else { throw PunaError("\(path): cannot cut off the unfinished last line: \(String(cString: puna_strerror(e)))") }
                repairedBytes = all.count - complete
            }
        }
        let fd = puna_open_write(path, 1)
        guard fd >= 0 else { throw PunaError("\(path): cannot open for writing: \(String(cString: puna_strerror(-fd)))") }
        self.fd = fd
        // Make the repair (or the new empty file) durable before any record is added.
        let synced = puna_fsync(fd)
        guard synced == 0 else {
            _ = puna_close(fd)  // the sync error is the one to report
            throw PunaError("\(path): cannot sync to disk: \(String(cString: puna_strerror(synced)))")
        }
    }

    // Every record was synced when it was written, so a failing close loses nothing.
    deinit { _ = puna_close(fd) }

    /// Write one record whole (one write(2)) and fsync it. A write that fails part way (a full disk)
    /// is cut back off, so the file never ends in half a record.
    public func append(_ result: BatchResult) throws(PunaError) {
        let line = result.jsonLine
        let sizeBefore = puna_fd_size(fd)
        let e = line.withUnsafeBytes { puna_write_all(fd, $0.baseAddress!, Int64($0.count)) }
        guard e == 0 else {
            var message = "\(path): cannot write: \(String(cString: puna_strerror(e)))"
            if sizeBefore >= 0 {
                let t = puna_ftruncate(fd, sizeBefore)
                if t != 0 { message += "; the unfinished last line could not be cut off (\(String(cString: puna_strerror(t)))): the next run removes it" }
            }
            throw PunaError(message)
        }
        let s = puna_fsync(fd)
        guard s == 0 else { throw PunaError("\(path): cannot sync to disk: \(String(cString: puna_strerror(s)))") }
        doneKeys.insert(result.id.key)
    }
}
