import CPuna

/// A record's id: a string or an integer, as the input wrote it, or the line number when it had none.
public enum BatchID: Equatable {
    case string(String)
    case number(Int)

    /// Unique text per id; "7" and 7 are different ids.
    public var key: String {
        switch self {
        case .string(let s): return "s:" + s
        case .number(let n): return "n:\(n)"
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
    /// The line's object; nil when the line is not a JSON object (then `inputError` says why).
    public let fields: JSONValue?
    public let inputError: String?

    /// The adapter the record asks for, as written (also on its error record).
    public var adapterName: String? { fields?["adapter"]?.string }
}

/// Settings a record falls back on when it does not set them (from the command line).
public struct BatchDefaults {
    /// nil: raw for a `prompt`, alpaca for an `instruction`.
    public var template: PromptTemplate? = nil
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
    public func prepare(defaults: BatchDefaults, tokenizer: Tokenizer,
                        adapters: [String]) throws(PunaError) -> (job: BatchJob, adapter: String?) {
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
        var template = defaults.template ?? (instruction != nil ? .alpaca : .raw)
        if let name = try text("template") {
            guard let t = PromptTemplate(name: name) else {
                throw PunaError("field 'template': unknown template '\(name)' (choose from \(PromptTemplate.names.joined(separator: ", ")))")
            }
            template = t
        }
        let rendered = template.render(prompt: body, input: try text("input"), system: try text("system") ?? defaults.system)

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

        let tokens = tokenizer.encode(rendered, addBOS: tokenizer.addsBOS)
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
    /// Every record of a JSONL file ("-" reads standard input). A line that is not a JSON object
    /// becomes a record with `inputError`; ids must be unique across the whole file (resume skips
    /// ids found in the output, so a repeated id would be lost), else the whole file is refused.
    public static func read(path: String) throws(PunaError) -> [BatchRequest] {
        var size: Int64 = 0
        var error: Int32 = 0
        guard let bytes = puna_read_file(path == "-" ? "/dev/stdin" : path, &size, &error) else {
            throw PunaError("\(path): cannot read: \(String(cString: puna_strerror(error)))")
        }
        defer { puna_free(bytes) }
        return try parse(UnsafeBufferPointer(start: bytes, count: Int(size)), source: path)
    }

    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>, source: String) throws(PunaError) -> [BatchRequest] {
        var records: [BatchRequest] = []
        var firstLine: [String: Int] = [:]
        let failure = forEachLine(bytes) { (lineNumber: Int, line: UnsafeBufferPointer<UInt8>) -> PunaError? in
            guard !isBlank(line) else { return nil }
            var fields: JSONValue? = nil
            var problem: String? = nil
            var id = BatchID.number(lineNumber)
            do throws(PunaError) {
                let value = try JSONValue.parse(bytes: line)
                if value.object == nil {
                    problem = "the line is not a JSON object"
                } else {
                    fields = value
                    if let v = value["id"], !v.isNull {
                        if let given = BatchID(v) { id = given } else { problem = "field 'id' must be a string or an integer" }
                    }
                }
            } catch {
                problem = "invalid JSON: " + (error.message.hasPrefix("JSON: ") ? String(error.message.dropFirst(6)) : error.message)
            }
            if let earlier = firstLine[id.key] {
                return PunaError("\(source): line \(lineNumber): id \(id.json) is already used on line \(earlier) (ids must be unique: a rerun skips the ids already in the output)")
            }
            firstLine[id.key] = lineNumber
            records.append(BatchRequest(line: lineNumber, index: records.count, id: id,
                                        fields: problem == nil ? fields : nil, inputError: problem))
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
        if puna_file_exists(path) != 0 {
            var size: Int64 = 0
            var error: Int32 = 0
            guard let bytes = puna_read_file(path, &size, &error) else {
                throw PunaError("\(path): cannot read: \(String(cString: puna_strerror(error)))")
            }
            defer { puna_free(bytes) }
            let all = UnsafeBufferPointer(start: bytes, count: Int(size))
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
        _ = puna_fsync(fd)
    }

    deinit { _ = puna_close(fd) }

    /// Write one record whole (one write(2)) and fsync it.
    public func append(_ result: BatchResult) throws(PunaError) {
        let line = result.jsonLine
        let e = line.withUnsafeBytes { puna_write_all(fd, $0.baseAddress!, Int64($0.count)) }
        guard e == 0 else { throw PunaError("\(path): cannot write: \(String(cString: puna_strerror(e)))") }
        let s = puna_fsync(fd)
        guard s == 0 else { throw PunaError("\(path): cannot sync to disk: \(String(cString: puna_strerror(s)))") }
        doneKeys.insert(result.id.key)
    }
}
