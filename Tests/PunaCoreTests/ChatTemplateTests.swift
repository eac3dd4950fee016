import Foundation
import PunaCore
import XCTest

/// Puna's Jinja renderer against Python jinja2 set up as transformers' apply_chat_template sets it
/// up (scripts/template-reference.py), over llama.cpp's corpus of real chat templates
/// (models/templates/*.jinja of the llama.cpp tree; nothing of it is kept in this repository).
final class ChatTemplateTests: XCTestCase {
    static let fixedNow = JinjaDate(year: 2026, month: 1, day: 15, hour: 10, minute: 30, second: 0)

    /// The Python with jinja2: PUNA_JINJA_PYTHON, else .cache/venv-jinja/bin/python of the checkout.
    static var jinjaPython: String? {
        if let p = ProcessInfo.processInfo.environment["PUNA_JINJA_PYTHON"], !p.isEmpty { return p }
        let venv = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".cache/venv-jinja/bin/python").path
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : nil
    }

    /// Templates every one of whose cases must match jinja2.
    static let mustPass = [
        "meta-llama-Llama-3.1-8B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja", "meta-llama-Llama-3.3-70B-Instruct.jinja",
        "Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja", "google-gemma-2-2b-it.jinja",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja", "Mistral-Small-3.2-24B-Instruct-2506.jinja",
        "microsoft-Phi-3.5-mini-instruct.jinja", "HuggingFaceTB-SmolLM3-3B.jinja",
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    ]

    func renderCase(_ template: JinjaTemplate, _ c: JSONValue) throws(PunaError) -> String {
        var vars: [(String, JinjaValue)] = [
            ("messages", JinjaValue(json: c["messages"]!)),
            ("tools", JinjaValue(json: c["tools"] ?? .null)),
            ("documents", .none),
            ("add_generation_prompt", .bool(c["add_generation_prompt"]?.bool ?? false)),
        ]
        vars.append(("bos_token", .string(c["bos_token"]?.string ?? "")))
        vars.append(("eos_token", .string(c["eos_token"]?.string ?? "")))
        return try template.render(vars, now: ChatTemplateTests.fixedNow)
    }

    func testCorpusMatchesJinja2() throws {
        guard let tree = LlamaTree.path else { throw XCTSkip("llama.cpp tree not found (set PUNA_LLAMA_TREE)") }
        guard let python = ChatTemplateTests.jinjaPython else {
            throw XCTSkip("no Python with jinja2: create .cache/venv-jinja (python3 -m venv .cache/venv-jinja && .cache/venv-jinja/bin/pip install jinja2) or set PUNA_JINJA_PYTHON")
        }
        let dir = tree + "/models/templates"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".jinja") }.sorted()
        XCTAssertGreaterThan(files.count, 50)
        let script = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("scripts/template-reference.py").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script] + files.map { dir + "/" + $0 }
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "template-reference.py failed")
        let doc = try JSONValue.parse(bytes: [UInt8](data), maxDepth: 64)
        let cases = doc["cases"]?.array ?? []

        var parsed: [String: Result<JinjaTemplate, PunaError>] = [:]
        var table: [String: (cases: Int, passed: Int, firstFailure: String?)] = [:]
        for c in cases {
            let name = c["template"]!.string!
            if parsed[name] == nil {
                let source = try String(contentsOfFile: dir + "/" + name, encoding: .utf8)
                do { parsed[name] = .success(try JinjaTemplate(source)) } catch { parsed[name] = .failure(error) }
            }
            let expected = c["output"]?.string
            var got: String? = nil
            var gotError: String? = nil
            switch parsed[name]! {
            case .failure(let e): gotError = e.message
            case .success(let t):
                do { got = try renderCase(t, c) } catch { gotError = error.message }
            }
            let ok = got == expected
            var row = table[name] ?? (0, 0, nil)
            row.cases += 1
            if ok { row.passed += 1 } else if row.firstFailure == nil {
                let caseName = c["case"]!.string!
                if let expected, let got {
                    let e = Array(expected.unicodeScalars), g = Array(got.unicodeScalars)
                    var i = 0
                    while i < min(e.count, g.count) && e[i] == g[i] { i += 1 }
                    func around(_ a: [Unicode.Scalar]) -> String {
                        var s = String.UnicodeScalarView(); s.append(contentsOf: a[max(0, i - 30)..<min(a.count, i + 40)]); return String(s).debugDescription
                    }
                    row.firstFailure = "\(caseName): differs at \(i): jinja2 \(around(e)) puna \(around(g))"
                } else if let expected {
                    row.firstFailure = "\(caseName): puna error \(gotError ?? "") (jinja2 rendered \(expected.count) chars)"
                } else {
                    row.firstFailure = "\(caseName): jinja2 error \(c["error"]?.string ?? "") but puna " + (got == nil ? "error \(gotError ?? "")" : "rendered")
                }
                // Same error-or-not counts when both fail.
            }
            if !ok && expected == nil && got == nil {
                row.passed += 1
                if row.firstFailure?.hasPrefix(c["case"]!.string! + ": jinja2 error") == true { row.firstFailure = nil }
            }
            table[name] = row
        }
        var fullyPassing = 0
        var report = "template | cases | passed\n"
        for name in table.keys.sorted() {
            let row = table[name]!
            if row.passed == row.cases { fullyPassing += 1 }
            report += "\(name) | \(row.cases) | \(row.passed)" + (row.passed == row.cases ? "" : "   FAIL \(row.firstFailure ?? "")") + "\n"
        }
        report += "fully passing: \(fullyPassing) of \(table.count) templates\n"
        print(report)
        for name in ChatTemplateTests.mustPass {
            let row = table[name]
            XCTAssertNotNil(row, "\(name) missing from the corpus")
            if let row { XCTAssertEqual(row.passed, row.cases, "\(name): \(row.firstFailure ?? "")") }
        }
        XCTAssertGreaterThanOrEqual(Double(fullyPassing), 0.9 * Double(table.count), "fewer than 90% of the templates match jinja2")
    }
}
