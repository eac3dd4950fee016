import Foundation
import PunaCore
import XCTest

/// Paths of the committed fixtures and of the built `puna` binary.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let models = root.appendingPathComponent("models")
    static let tokenizer = root.appendingPathComponent("tokenizer")

    static func json(_ url: URL) throws -> [String: Any] {
        let data = try Data(contentsOf: url)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func floats(_ url: URL) throws -> [Float] {
        let data = try Data(contentsOf: url)
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// The model manifest written by scripts/fixtures/make_models.py.
    static func manifest() throws -> [String: Any] { try json(models.appendingPathComponent("manifest.json")) }

    /// `count` greedy tokens after `prompt` (argmax, ties to the lowest id; EOS does not stop), as
    /// the fixture generators compute them. Needs PunaCore, imported by the test files.
    static func greedy(_ model: LanguageModel, _ prompt: [Int32], count: Int) throws -> [Int32] {
        let cache = try model.makeCache(contextLength: 128, type: .f32)
        var logits = try model.evaluate(prompt, cache: cache)
        var produced: [Int32] = []
        for _ in 0..<count {
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            produced.append(Int32(best))
            logits = try model.evaluate([Int32(best)], cache: cache)
        }
        return produced
    }

    /// The `puna` executable built next to the test bundle.
    static var punaBinary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("puna")
    }

    /// Run puna with arguments; returns (exit status, stdout, stderr).
    @discardableResult
    static func runPuna(_ arguments: [String], stdin: String? = nil) throws -> (Int32, String, String) {
        let p = Process()
        p.executableURL = punaBinary
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let input = Pipe()
        p.standardInput = input
        try p.run()
        if let stdin { input.fileHandleForWriting.write(stdin.data(using: .utf8)!) }
        try input.fileHandleForWriting.close()
        // Read both pipes fully before waiting, so a large output cannot deadlock the child.
        var outData = Data(), errData = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }
}

/// Largest |got - want| relative to the largest |want|; infinity when the lengths differ.
func maxRelativeDifference(_ got: [Float], _ want: [Float]) -> Float {
    let scale = want.reduce(0) { max($0, abs($1)) }
    var worst: Float = 0
    for i in 0..<min(got.count, want.count) { worst = max(worst, abs(got[i] - want[i])) }
    return got.count == want.count ? worst / scale : .infinity
}
