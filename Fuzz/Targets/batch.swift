// The batch JSONL reader (BatchInput.parse) on arbitrary bytes and each record's prepare()
// (fields, ranges, templates, stops, adapter names, prompt tokens); then the same bytes as an
// existing output file (BatchOutput: resume scan and repair of a cut-short last line), appending
// one error record per input record. Reopening the repaired and appended file must succeed and
// know every appended id.
import PunaCore

private let tokenizer: Tokenizer = {
    var pieces: [String] = ["<unk>", "<s>", "</s>"]
    var types: [GGUFValue] = [.int32(2), .int32(3), .int32(3)]
    let hex = Array("0123456789ABCDEF")
    for b in 0..<256 { pieces.append("<0x\(hex[b >> 4])\(hex[b & 15])>"); types.append(.int32(6)) }
    for p in ["▁", "▁the", "▁a", "e", "t", "he", "th", "▁t", "in", "er", "an", "\n", "### Instruction:", "<|user|>"] {
        pieces.append(p); types.append(.int32(p.hasPrefix("<|") || p.hasPrefix("###") ? 4 : 1))
    }
    let scores = pieces.indices.map { GGUFValue.float32(-Float($0)) }
    let metadata: [String: GGUFValue] = [
        Tokenizer.modelKey: .string("llama"),
        Tokenizer.tokensKey: .array(.string, pieces.map { .string($0) }),
        Tokenizer.scoresKey: .array(.float32, scores),
        Tokenizer.tokenTypeKey: .array(.int32, types),
    ]
    do throws(PunaError) { return try Tokenizer(metadata: metadata, source: "fuzz vocabulary") } catch {
        fatalError("fuzz: the batch target's vocabulary does not load: \(error.message)")
    }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    var ids: [BatchID] = []
    if let records = try? BatchInput.parse(bytes, source: "input.jsonl") {
        var defaults = BatchDefaults()
        if size % 2 == 1 { defaults.template = .alpaca; defaults.system = "system" }
        for r in records {
            _ = r.adapterName; _ = r.id.json
            if let (job, _) = try? r.prepare(defaults: defaults, tokenizer: tokenizer, adapters: ["one", "two"]) {
                precondition(job.promptTokens.allSatisfy { tokenizer.isValid($0) })
            }
            if ids.count < 4 { ids.append(r.id) }
        }
    }
    let path = Scratch.write("output.jsonl", data, size)
    guard let output = try? BatchOutput(path: path) else { return 0 }
    let before = output.existingRecords
    for id in ids {
        do throws(PunaError) { try output.append(.failure(id, "fuzz \(id.json)")) } catch {
            fatalError("append failed: \(error.message)")
        }
    }
    let reopened: BatchOutput
    do throws(PunaError) { reopened = try BatchOutput(path: path) } catch {
        fatalError("the repaired and appended output does not reopen: \(error.message)")
    }
    precondition(reopened.repairedBytes == 0, "a repaired file still has a cut-short line")
    precondition(reopened.existingRecords == before + ids.count, "records lost: \(before) + \(ids.count) != \(reopened.existingRecords)")
    for id in ids { precondition(reopened.doneKeys.contains(id.key), "appended id \(id.json) not found on reopening") }
    return 0
}
