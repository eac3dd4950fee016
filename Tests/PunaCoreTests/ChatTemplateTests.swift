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

/// Jinja semantics that are easy to get wrong, and hostile templates: each must fail with an error
/// that names the construct and the line, without hanging or crashing.
final class JinjaRendererTests: XCTestCase {
    let now = JinjaDate(year: 2026, month: 1, day: 15, hour: 10, minute: 30)

    func render(_ source: String, _ vars: [(String, JinjaValue)] = [], limits: JinjaLimits = JinjaLimits()) throws(PunaError) -> String {
        try JinjaTemplate(source, limits: limits).render(vars, now: now)
    }

    func expectError(_ source: String, _ fragments: [String], limits: JinjaLimits = JinjaLimits(),
                     file: StaticString = #filePath, line: UInt = #line) {
        let start = Date()
        do {
            let out = try render(source, limits: limits)
            XCTFail("rendered \(out.utf8.count) bytes instead of failing", file: file, line: line)
        } catch {
            for f in fragments {
                XCTAssertTrue(error.message.contains(f), "'\(error.message)' does not mention '\(f)'", file: file, line: line)
            }
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 20, "took too long", file: file, line: line)
    }

    func testPythonSemantics() throws {
        XCTAssertEqual(try render("{{ [1, 'a', none, true, 2.5, {'k': \"it's\"}] }}"), "[1, 'a', None, True, 2.5, {'k': \"it's\"}]")
        XCTAssertEqual(try render("{{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1.0 }} {{ 3 * 1.5 }}"), "3.5 3 -4 2 1024 1.0 4.5")
        XCTAssertEqual(try render("{{ 'abc'[::-1] }}{{ [1,2,3][1:] }}{{ 'héllo'[1] }}"), "cba[2, 3]é")
        XCTAssertEqual(try render("{{ x }}|{{ x is defined }}|{{ none is none }}|{{ x | default('d') }}"), "|False|True|d")
        XCTAssertEqual(try render("{{ 'a' ~ 1 ~ none }}{{ 'b' + 'c' }}{{ 'x' in 'xyz' }}"), "a1NonebcTrue")
        XCTAssertEqual(try render("{{ {'b': 1, 'a': [1, 'é']} | tojson }}|{{ [1] | tojson(indent=2) }}"), "{\"b\": 1, \"a\": [1, \"é\"]}|[\n  1\n]")
        XCTAssertEqual(try render("{{ '  a b  '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' x  y '.split() }}|{{ 'hello world' | title }}"),
                       "a b|['a', 'b', '', 'c']|['x', 'y']|Hello World")
        XCTAssertEqual(try render("{% for x in [1,2,3] if x != 2 %}{{ loop.index }}{{ x }}{{ ',' if not loop.last }}{% else %}none{% endfor %}"), "11,23")
        XCTAssertEqual(try render("{% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"), "3")
        XCTAssertEqual(try render("{% macro m(a, b='B') %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(2, b=3) }}"), "1B23")
        XCTAssertEqual(try render("  {% if true %}\n  yes\n  {% endif %}\nend\n"), "  yes\nend")
        XCTAssertEqual(try render("a  {%- if true -%}  b  {%- endif %}"), "ab")
        XCTAssertEqual(try render("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %-d, %Y') }}"), "15 Jan 2026|January 15, 2026")
        XCTAssertEqual(try render("{% set x %}block {{ 1 }}{% endset %}{{ x | upper }}"), "BLOCK 1")
    }

    func testHostileTemplates() {
        // Runaway recursion.
        expectError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n{{ f(0) }}", ["macro 'f'", "line 1", "runaway recursion"])
        // Huge range.
        expectError("x\n{% for i in range(1000000000) %}{% endfor %}", ["line 2", "range()"])
        // Loops whose product never ends.
        expectError("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", ["for loop", "iterations"])
        // Exponential recursion (each level calls itself twice) and work that loops over big strings.
        expectError("{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}", ["units of work"])
        expectError("{% set s = 'x' * 4000000 %}{% for i in range(100000) %}{% if 'y' in s %}{% endif %}{% endfor %}", ["units of work", "line 1"])
        expectError("{{ range(100000) | list | sort | length }}", ["units of work"])
        // A chain of 100 000 operators (a left-deep tree) is refused before it is walked.
        expectError("{{ 1" + String(repeating: " + 1", count: 100_000) + " }}", ["chains more than", "line 1"])
        expectError("{{ x" + String(repeating: "|trim", count: 100_000) + " }}", ["chains more than"])
        // Deep nesting of tags and of expressions.
        expectError(String(repeating: "{% if true %}", count: 300), ["nesting deeper than"])
        expectError("{{ " + String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000) + " }}", ["nesting deeper than", "line 1"])
        // Output bombs: printed text and doubled strings.
        var small = JinjaLimits()
        small.maxOutputBytes = 1 << 20
        expectError("{% set s = 'x' * 1000 %}{% for i in range(100000) %}{{ s }}{% endfor %}", ["output exceeds"], limits: small)
        expectError("{% set ns = namespace(s='x') %}\n\n{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", ["line 3", "string exceeds"], limits: small)
        expectError("{{ 'x' * 100000000000 }}", ["line 1", "string exceeds"])
        // Unterminated tags.
        expectError("a\n{% if x %}\nb", ["'{% if %}' opened on line 2 is never closed"])
        expectError("a\n\n{{ x ", ["line 3", "unterminated '{{'"])
        expectError("{# never closed", ["line 1", "unterminated comment"])
        expectError("{{ 'abc }}", ["line 1", "unterminated string"])
        expectError("{% for x in y %}{% endif %}", ["unexpected '{% endif %}'"])
        // Unknown filter and test (outside an if: at parse time, as jinja2).
        expectError("a\nb\n{{ x | frobnicate }}", ["line 3", "unsupported filter 'frobnicate'"])
        expectError("{% if true %}\n{{ x | frobnicate }}{% endif %}", ["line 2", "unsupported filter 'frobnicate'"])
        expectError("{{ x is frobnicated }}", ["line 1", "unsupported test 'frobnicated'"])
        // No file access or unsupported tags.
        expectError("{% include 'secret.txt' %}", ["line 1", "unsupported construct '{% include %}'"])
        expectError("\n{% import 'x' as y %}", ["line 2", "unsupported construct '{% import %}'"])
        expectError("{% for x in y recursive %}{% endfor %}", ["recursive"])
        // The sandbox: inputs cannot be modified; raise_exception is an error.
        expectError("{% set l = [1] %}{{ l.append(2) }}", ["list.append"])
        expectError("{{ raise_exception('no system role') }}", ["raise_exception: no system role"])
        expectError("{{ x.y }}", ["'x' is undefined"])
        XCTAssertEqual(try? render(#"{{ "<b>"|safe + "\"x\" & y" }}|{{ "<" ~ "<"|safe }}"#), "<b>&#34;x&#34; &amp; y|<<")
    }

    /// The work budget leaves room for long conversations with real templates (200 turns of 4 KB).
    func testLongConversationsFitTheBudget() throws {
        guard let tree = LlamaTree.path else { throw XCTSkip("llama.cpp tree not found (set PUNA_LLAMA_TREE)") }
        let text = String(repeating: "word ", count: 800)
        var messages: [JinjaValue] = []
        for i in 0..<200 {
            var d = JinjaDict()
            d["role"] = .string(i % 2 == 0 ? "user" : "assistant")
            d["content"] = .string(text)
            messages.append(.dict(d))
        }
        for name in ["Qwen-Qwen3-0.6B.jinja", "meta-llama-Llama-3.1-8B-Instruct.jinja", "openai-gpt-oss-120b.jinja",
                     "deepseek-ai-DeepSeek-V3.1.jinja", "google-gemma-4-31B-it.jinja"] {
            let source = try String(contentsOfFile: tree + "/models/templates/" + name, encoding: .utf8)
            let out = try JinjaTemplate(source).render([("messages", .list(messages)), ("add_generation_prompt", .bool(true)),
                                                        ("bos_token", .string("<s>")), ("eos_token", .string("</s>"))], now: now)
            XCTAssertGreaterThan(out.utf8.count, 200 * 4000, name)
        }
    }

    /// The PromptFormat choice: `auto` takes the file's chat template when present.
    func testPromptFormatResolution() throws {
        let chat = try ChatTemplate(source: "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
                                    bosToken: "<s>", eosToken: "</s>", now: now)
        guard case .chat = try PromptFormat.resolve(nil, chatTemplate: chat, fallback: .raw, what: "t") else { return XCTFail() }
        guard case .chat = try PromptFormat.resolve("auto", chatTemplate: chat, fallback: .raw, what: "t") else { return XCTFail() }
        guard case .builtin(.raw) = try PromptFormat.resolve("auto", chatTemplate: nil, fallback: .raw, what: "t") else { return XCTFail() }
        guard case .builtin(.alpaca) = try PromptFormat.resolve("alpaca", chatTemplate: chat, fallback: .raw, what: "t") else { return XCTFail() }
        XCTAssertThrowsError(try PromptFormat.resolve("chatml", chatTemplate: chat, fallback: .raw, what: "t"))
        XCTAssertEqual(try PromptFormat.chat(chat).render(prompt: "Hi", system: "Be brief."), "<|system|>Be brief.<|user|>Hi<|assistant|>")
        XCTAssertEqual(try PromptFormat.chat(chat).render(prompt: "Hi", input: "ctx"), "<|user|>Hi\nctx<|assistant|>")
    }
}

/// `puna template` on vocab-only GGUF files that carry a chat template, against jinja2.
final class TemplateCommandTests: XCTestCase {
    func testVocabFilesMatchJinja2() throws {
        guard let tree = LlamaTree.path else { throw XCTSkip("llama.cpp tree not found (set PUNA_LLAMA_TREE)") }
        guard let python = ChatTemplateTests.jinjaPython else { throw XCTSkip("no Python with jinja2 (see ChatTemplateTests)") }
        let repo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("puna-template-\(getpid())")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        for vocab in ["qwen2", "phi-3", "command-r", "gemma-4"] {
            let path = tree + "/models/ggml-vocab-\(vocab).gguf"
            guard FileManager.default.fileExists(atPath: path) else { continue }
            let gguf = try GGUFFile(path: path)
            let source = gguf[ChatTemplate.metadataKey]!.stringValue!
            let chat = try XCTUnwrap(try ChatTemplate(gguf: gguf))
            let jinja = tmp.appendingPathComponent("\(vocab).jinja")
            try source.write(to: jinja, atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = [repo.appendingPathComponent("scripts/template-reference.py").path, "--bos", chat.bosToken, "--eos", chat.eosToken, jinja.path]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            let cases = try JSONValue.parse(bytes: [UInt8](data))["cases"]!.array!
            for c in cases where c["error"] == nil && c["tools"]?.isNull != false {
                let messagesFile = tmp.appendingPathComponent("m.json")
                var j = JSONWriter()
                j.beginObject(); j.key("messages"); writeJSON(c["messages"]!, &j); j.endObject()
                try j.string.write(to: messagesFile, atomically: true, encoding: .utf8)
                var arguments = ["template", "-m", path, "-i", messagesFile.path]
                if c["add_generation_prompt"]?.bool == false { arguments.append("--no-generation-prompt") }
                let (status, out, err) = try Fixtures.runPuna(arguments)
                XCTAssertEqual(status, 0, "\(vocab) \(c["case"]!.string!): \(err)")
                if source.contains("strftime_now") { continue }  // the CLI uses today's date
                XCTAssertEqual(out, c["output"]!.string!, "\(vocab) \(c["case"]!.string!)")
            }
        }
        let (status, _, err) = try Fixtures.runPuna(["template", "-m", tree + "/models/ggml-vocab-llama-spm.gguf", "-i", "/dev/null"])
        XCTAssertNotEqual(status, 0)
        XCTAssertFalse(err.isEmpty)
    }

    func writeJSON(_ v: JSONValue, _ j: inout JSONWriter) {
        switch v {
        case .null: j.null()
        case .bool(let b): j.value(b)
        case .number(let d, _): j.value(d, decimals: d == d.rounded() ? 0 : 6)
        case .string(let s): j.value(s)
        case .array(let a): j.beginArray(); for x in a { writeJSON(x, &j) }; j.endArray()
        case .object(let o): j.beginObject(); for m in o { j.key(m.key); writeJSON(m.value, &j) }; j.endObject()
        }
    }
}

/// run/chat/template with a model file that carries a chat template (a fixture model rewritten
/// with a `tokenizer.chat_template` key).
final class ChatTemplateCLITests: XCTestCase {
    func withTemplate(_ template: String) throws -> String {
        let gguf = try GGUFFile(path: Fixtures.models.appendingPathComponent("tiny-gqa-q8_0.gguf").path)
        var w = GGUFWriter(alignment: gguf.alignment)
        for k in gguf.keys where k != "general.alignment" { w.set(k, gguf.metadata[k]!) }
        w.set(ChatTemplate.metadataKey, .string(template))
        for t in gguf.tensors { w.addTensor(name: t.name, shape: t.shape, type: t.type, bytes: Array(gguf.data(of: t))) }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("puna-chat-\(UUID().uuidString).gguf").path
        try w.write(to: out)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: out) }
        return out
    }

    static let extending = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"

    func testRunChatAndTemplateUseTheFileTemplate() throws {
        let model = try withTemplate(ChatTemplateCLITests.extending)
        let messages = FileManager.default.temporaryDirectory.appendingPathComponent("puna-msgs-\(UUID().uuidString).json")
        try #"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#.write(to: messages, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: messages) }
        var (status, out, err) = try Fixtures.runPuna(["template", "-m", model, "-i", messages.path])
        XCTAssertEqual(status, 0, err)
        XCTAssertEqual(out, "system: Be brief.\nuser: Hi\nassistant: ")
        (status, out, err) = try Fixtures.runPuna(["template", "-m", model, "-i", messages.path, "--no-generation-prompt"])
        XCTAssertEqual(out, "system: Be brief.\nuser: Hi\n")
        (status, out, err) = try Fixtures.runPuna(["template", "-m", model, "-i", messages.path, "--template", "guanaco"])
        XCTAssertEqual(out, "Be brief.\n### Human: Hi ### Assistant:")

        (status, out, err) = try Fixtures.runPuna(["run", "-m", model, "-p", "Hi", "--system", "Be brief.", "-n", "4", "--temp", "0"])
        XCTAssertEqual(status, 0, err)
        // A conversation whose rendering extends the cached text: no re-evaluation.
        (status, out, err) = try Fixtures.runPuna(["chat", "-m", model, "-n", "6", "--temp", "0"], stdin: "Hello there\nAnd again\nThird\n")
        XCTAssertEqual(status, 0, err)
        XCTAssertFalse(err.contains("re-evaluating"), err)
        XCTAssertGreaterThanOrEqual(out.split(separator: "\n", omittingEmptySubsequences: false).count, 3, out)
    }

    /// Batch records use the file's template by default ("auto"), or the one they name; the
    /// prompt token counts show which: the chat rendering adds "user: " and "\nassistant: ".
    func testBatchUsesTheFileTemplate() throws {
        let model = try withTemplate(ChatTemplateCLITests.extending)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("puna-batch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in.jsonl").path, output = dir.appendingPathComponent("out.jsonl").path
        try """
            {"id": "auto", "prompt": "Hello there"}
            {"id": "raw", "prompt": "Hello there", "template": "raw"}
            {"id": "named-auto", "prompt": "Hello there", "template": "auto"}

            """.write(toFile: input, atomically: true, encoding: .utf8)
        let (status, _, err) = try Fixtures.runPuna(["batch", "-m", model, "-i", input, "-o", output, "-n", "2", "--parallel", "1"])
        XCTAssertEqual(status, 0, err)
        var tokensIn: [String: Int] = [:]
        for line in try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n") {
            let record = try JSONValue.parse(String(line))
            tokensIn[record["id"]!.string!] = record["tokens_in"]?.int
        }
        let auto = try XCTUnwrap(tokensIn["auto"]), raw = try XCTUnwrap(tokensIn["raw"])
        XCTAssertGreaterThan(auto, raw)
        XCTAssertEqual(tokensIn["named-auto"], auto)
    }

    func testChatReevaluatesWhenEarlierTurnsRenderDifferently() throws {
        // Earlier replies are dropped from the rendering: it no longer extends the cached text.
        let model = try withTemplate("{% for m in messages if m.role != 'assistant' %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")
        let (status, out, err) = try Fixtures.runPuna(["chat", "-m", model, "-n", "6", "--temp", "0"], stdin: "Hello there\nAnd again\n")
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("re-evaluating from token"), err)
        XCTAssertGreaterThanOrEqual(out.split(separator: "\n", omittingEmptySubsequences: false).count, 2, out)
    }

    func testBrokenTemplateIsAnErrorUnlessABuiltInIsChosen() throws {
        let model = try withTemplate("line one\n{{ messages | frobnicate }}")
        var (status, _, err) = try Fixtures.runPuna(["run", "-m", model, "-p", "Hi", "-n", "2"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("line 2") && err.contains("unsupported filter 'frobnicate'"), err)
        (status, _, err) = try Fixtures.runPuna(["run", "-m", model, "-p", "Hi", "-n", "2", "--template", "raw"])
        XCTAssertEqual(status, 0, err)
    }
}

/// Jinja expressions and statements one by one, against jinja2 (scripts/template-reference.py --snippets).
final class JinjaSnippetTests: XCTestCase {
    static let snippets: [String] = [
        "{{ x is sequence }}{{ x is iterable }}{{ none is iterable }}{{ 1 is number }}{{ true is number }}{{ true is integer }}{{ 1.0 is float }}",
        "{{ '3.7'|int }}|{{ '42'|int }}|{{ 'x'|int(5) }}|{{ 3.9|int }}|{{ '2.5'|float }}|{{ 'a'|float }}",
        "{{ 2.567|round(2) }}|{{ 2.5|round }}|{{ 3.5|round }}|{{ -2.5|round }}|{{ 7|round }}",
        "{{ '%s and %s'|format('a', 1) }}|{{ '{} {}'.format('a', 2) }}|{{ '{0}{1}{0}'.format('x','y') }}|{{ '{name}!'.format(name='n') }}",
        "{{ {'b': 2, 'a': 1}|dictsort }}|{{ {'b': 2, 'a': 1}|items|list }}|{{ {'b': 2, 'a': 1}.items()|list }}|{{ (1,) }}{{ () }}{{ (1, 'a')|tojson }}",
        "{{ (1, 2) == [1, 2] }}|{{ (1, 2) == (1, 2) }}|{{ (1, 2) + (3,) }}|{{ (1, 2)[1] }}|{{ (1, 2, 3)[1:] }}|{{ 2 in (1, 2) }}|{{ '%s-%s' % (1, 'x') }}|{% set a, b = 1, 2 %}{{ a }}{{ b }}",
        "{% for m in messages %}{{ loop.previtem.role if loop.previtem is defined else '-' }}/{{ loop.nextitem.role if not loop.last else '-' }}/{{ loop.revindex }};{% endfor %}",
        "{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(width=3, blank=true) }}",
        "{{ messages|map(attribute='role')|join(',') }}|{{ messages|join('|', attribute='role') }}|{{ messages|selectattr('role', 'equalto', 'user')|list|length }}",
        "{{ [3,1,2]|sort }}|{{ ['b','A','c']|sort }}|{{ ['b','A','c']|sort(case_sensitive=true) }}|{{ [3,1,2]|sort(reverse=true) }}|{{ messages|sort(attribute='role')|map(attribute='role')|list }}",
        "{{ [1,2,2,3,1]|unique|list }}|{{ ['a','A','b']|unique|list }}|{{ [1,2,3]|sum }}|{{ [1,5,3]|min }}|{{ [1,5,3]|max }}|{{ ['b','a']|first }}|{{ 'abc'|last }}",
        "{{ 'hello world-foo (bar)'|title }}|{{ 'hELLO'|capitalize }}|{{ 'abc'|upper }}|{{ 'ÀB'|lower }}|{{ 'abc'|center(9) }}|",
        "{{ ' a  b '.split(' ') }}|{{ 'a b c'.split(None, 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'abcabc'.replace('b', 'X', 1) }}|{{ 'xxaxx'.strip('x') }}|{{ 'abc'.startswith(('x','a')) }}",
        "{{ 'abc'.find('c') }}|{{ 'abc'.find('z') }}|{{ 'abcabc'.count('bc') }}|{{ '-'.join(['a','b']) }}|{{ 'a\\nb\\r\\nc'.splitlines() }}|{{ '12'.isdigit() }}",
        "{{ [1, [2, 'x'], {'k': none, 'f': 1.5e-7, 't': true}] }}|{{ 1e16 }}|{{ 1.5e300 * 1e10 }}|{{ 0.1 + 0.2 }}|{{ 10 / 4 }}|{{ 2 ** -1 }}",
        "{{ {'a': [1, {'b': 'é\"\\n'}], 'c': none}|tojson }}|{{ {'a': 1, 'b': [1, 2]}|tojson(indent=2) }}|{{ [1]|tojson(separators=(',', ':')) }}",
        "{{ 'abcdef'[1:4] }}|{{ 'abcdef'[::2] }}|{{ 'abcdef'[-2:] }}|{{ [1,2,3,4][::-2] }}|{{ [1,2,3][5:] }}|{{ 'abc'[-1] }}|{{ [1,2][5] }}|",
        "{% set ns = namespace(a=1, b=[]) %}{% set ns.a = ns.a + 1 %}{{ ns.a }}|{% set x = 1 %}{% for i in [1] %}{% set x = 5 %}{% endfor %}{{ x }}|{% if true %}{% set y = 3 %}{% endif %}{{ y }}",
        "{% macro m(a, b=2) %}[{{ a }}-{{ b }}]{% endmacro %}{{ m(1) }}{{ m(1, 3) }}{{ m(b=4, a=0) }}|{% set c = cycler('x', 'y') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}|{% set j = joiner('+') %}{{ j() }}a{{ j() }}b",
        "{% for i in range(3) %}{{ loop.cycle('o', 'e') }}{% endfor %}|{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }},{% endfor %}|{% for k, v in {'x': 1}.items() %}{{ k }}={{ v }}{% endfor %}",
        "{{ 'a' if false }}|{{ none|default('d') }}|{{ ''|default('d', true) }}|{{ undefined_thing|default('u') }}|{{ none is none }}|{{ not none }}",
        "{{ 1 == 1.0 }}|{{ 'a' < 'b' }}|{{ [1, 2] < [1, 3] }}|{{ 1 in [1.0] }}|{{ 'k' in {'k': 1} }}|{{ 'b' not in 'abc' }}",
        "{{ 7 // -2 }}|{{ -7 % 3 }}|{{ 7 % -3 }}|{{ 7.5 // 2 }}|{{ -7.5 % 2 }}|{{ 3 * 'ab' }}|{{ [0] * 3 }}|{{ 'a' ~ 1.0 ~ true }}",
        "{% filter upper %}up {{ 'x' }}{% endfilter %}|{% set b %}  block  {% endset %}[{{ b|trim }}]|{% for x in [] %}no{% else %}empty{% endfor %}",
        "{%- for m in messages -%}\n  {{- m.role }}\n{% endfor %}\n  {% if true %}\n    kept\n  {% endif %}\n{# comment #}\nend",
        "{{ messages[0].content|wordcount }}|{{ messages|length }}|{{ messages[0]|length }}|{{ 'héllo'|length }}|{{ messages|reverse|map(attribute='role')|first }}",
        "{{ [1,2,3]|select('odd')|list }}|{{ [1,2,3]|reject('odd')|list }}|{{ [0,1,'',none,'a']|select|list }}|{{ messages|rejectattr('role', 'in', ['user'])|map(attribute='role')|list }}",
        "{{ raise_exception('boom') if messages|length > 100 else 'fine' }}|{{ strftime_now('%Y-%m-%d %H:%M %A %a %j %b %B %p %I %y %e') }}",
        "{{ {'a': 1}.get('a') }}|{{ {'a': 1}.get('z') }}|{{ {'a': 1}.get('z', 5) }}|{{ {'a': 1}.keys()|list }}|{{ {'a': 1}.values()|list }}|{{ {1: 'x', 2: 'y'}[2] }}",
        "{{ x.y }}",
        "{{ messages.append(1) }}",
        "{{ 1 + 'a' }}",
        "{{ range(3)|list }}{{ range(1, 10, 3)|list }}{{ range(5, 0, -2)|list }}",
        "{{ 'a' ~ none }}|{{ none ~ 'b' }}|{{ undefined_x ~ 'c' }}|{{ undefined_x|length }}|{{ undefined_x|list }}|{{ undefined_x is defined }}",
        "{{ 'x'|safe + '<y>' }}|{{ '<y>' + 'x'|safe }}|{{ '<a>'|e }}|{{ '<a>'|escape|safe }}",
        "{{ messages[0]['role'] }}{{ messages[-1].role }}{{ messages[0].nonexistent is defined }}{{ messages[0].nonexistent }}|{{ (messages|last).content }}",
    ]

    static func render(_ source: String, _ messages: JinjaValue) -> (String?, String?) {
        do throws(PunaError) {
            let out = try JinjaTemplate(source).render([("messages", messages), ("tools", .none), ("documents", .none),
                                                        ("add_generation_prompt", .bool(true)), ("bos_token", .string("<s>")),
                                                        ("eos_token", .string("</s>"))], now: ChatTemplateTests.fixedNow)
            return (out, nil)
        } catch {
            return (nil, error.message)
        }
    }

    func testSnippetsMatchJinja2() throws {
        guard let python = ChatTemplateTests.jinjaPython else { throw XCTSkip("no Python with jinja2 (see ChatTemplateTests)") }
        let repo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [repo.appendingPathComponent("scripts/template-reference.py").path, "--snippets"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        var j = JSONWriter()
        j.beginArray(); for s in JinjaSnippetTests.snippets { j.value(s) }; j.endArray()
        input.fileHandleForWriting.write(Data(j.bytes))
        input.fileHandleForWriting.closeFile()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let results = try JSONValue.parse(bytes: [UInt8](data)).array!
        XCTAssertEqual(results.count, JinjaSnippetTests.snippets.count)
        let messages = JinjaValue(json: try JSONValue.parse(#"[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello! What is 2+2?"}, {"role": "assistant", "content": "2+2 is 4."}, {"role": "user", "content": "And 3+3?"}]"#))
        for (source, expected) in zip(JinjaSnippetTests.snippets, results) {
            let (got, error) = JinjaSnippetTests.render(source, messages)
            if let want = expected["output"]?.string {
                XCTAssertEqual(got, want, "\(source)\n(puna error: \(error ?? "none"))")
            } else {
                XCTAssertNil(got, "\(source): jinja2 fails (\(expected["error"]?.string ?? "")) but puna rendered")
            }
        }
    }
}
