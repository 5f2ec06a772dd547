package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.Protocol
import dev.fraqat.deploy.core.ProtocolException
import dev.fraqat.deploy.core.Request
import dev.fraqat.deploy.core.Result
import dev.fraqat.deploy.core.State
import dev.fraqat.deploy.core.Status
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.assertThrows
import java.io.File

@Suppress("UNCHECKED_CAST")
private fun Any?.o(key: String) = (this as MutableMap<String, Any?>)[key] as MutableMap<String, Any?>

@Suppress("UNCHECKED_CAST")
private fun Any?.l(key: String) = (this as MutableMap<String, Any?>)[key] as MutableList<Any?>

@Suppress("UNCHECKED_CAST")
private fun Any?.m() = this as MutableMap<String, Any?>

fun protocolTests(s: Suite) {
    s.test("protocol: the Kotlin constants are the Python ones") {
        val py = File(repo, "fraqat_deploy/device/protocol.py").readText()
        assertEquals(true, py.contains("SCHEMA_VERSION = ${Protocol.SCHEMA_VERSION}\n"), "SCHEMA_VERSION in protocol.py")
        assertEquals(true, py.contains("PACKAGE = \"${Protocol.PACKAGE}\""), "PACKAGE in protocol.py")
        assertEquals(true, py.contains("ACTIVITY = \"${Protocol.ACTIVITY}\""), "ACTIVITY in protocol.py")
        assertEquals(true, py.contains("MODELS_DIR = \"${Protocol.MODELS_DIR}\"") && py.contains("RUNS_DIR = \"${Protocol.RUNS_DIR}\""), "folders")
        assertEquals("/sdcard/Android/data/dev.fraqat.deploy/files", Protocol.FILES_DIR, "files folder")
    }

    for ((message, name) in listOf("request" to "request", "result" to "result", "result" to "result_error", "status" to "status")) {
        s.test("protocol: golden $name.json follows the $message schema") { schemas.validate(message, example(name)) }
    }

    s.test("protocol: the schemas reject what the app must not accept") {
        fun rejects(message: String, data: Any?, path: String) {
            val e = assertThrows<ProtocolException>("$message at $path") { schemas.validate(message, data) }
            assertTrue(e.message!!.contains("valid at $path:")) { "expected a violation at $path, got: ${e.message}" }
        }
        val request = example("request")
        rejects("request", copy(request).m().apply { put("schema_version", 2) }, "schema_version")
        rejects("request", copy(request).m().apply { put("id", "../../etc") }, "id")
        rejects("request", copy(request).m().apply { put("extra", 1) }, "(top)")
        rejects("request", copy(request).m().apply { remove("config") }, "(top)")
        rejects("request", copy(request).m().apply { put("prompts", listOf<Any?>()) }, "prompts")
        rejects("request", copy(request).apply { o("model").put("components", linkedMapOf<String, Any?>()) }, "model/components")
        rejects("request", copy(request).apply { o("config").put("runs", 0) }, "config/runs")
        rejects("request", copy(request).apply { o("pipeline").put("kind", "flux") }, "pipeline/kind")
        rejects("request", copy(request).apply { o("pipeline").put("steps", 2.5) }, "pipeline/steps")
        copy(request).also { r ->
            r.o("model").o("components").o("transformer").l("files")[0].m()["sha256"] = "ABC"
            rejects("request", r, "model/components/transformer/files/0/sha256")
        }
        copy(request).also { r ->
            r.l("prompts")[0].o("tensors").o("noise")["dtype"] = "float16"
            rejects("request", r, "prompts/0/tensors/noise/dtype")
        }
        copy(request).also { r ->
            r.l("prompts")[0].o("tensors").o("noise")["shape"] = listOf(1, 0)
            rejects("request", r, "prompts/0/tensors/noise/shape/1")
        }
        // 8.0 is an integer for JSON Schema (and for Python's jsonschema)
        schemas.validate("request", copy(request).apply { o("pipeline").put("steps", 8.0) })

        val result = example("result")
        rejects("result", copy(result).apply { o("timings_ms").o("end_to_end").remove("p90") }, "timings_ms/end_to_end")
        rejects("result", copy(result).apply { o("timings_ms").o("components").o("transformer").put("n", 0) }, "timings_ms/components/transformer/n")
        rejects("result", copy(result).m().apply { put("status", "maybe") }, "status")
        rejects("result", copy(result).apply { o("device").put("android_sdk", "35") }, "device/android_sdk")
        rejects("result", copy(result).apply { o("device").put("runtime", "cpu") }, "device/runtime")
        rejects("result", copy(result).m().apply { put("error", linkedMapOf("kind" to "oops", "message" to "x")) }, "error/kind")
        rejects("result", copy(result).apply { l("outputs")[0].m().remove("seed") }, "outputs/0")
        schemas.validate("result", copy(result).apply { o("timings_ms").put("end_to_end", null) })
        rejects("status", copy(example("status")).m().apply { put("done", -1) }, "done")
        rejects("status", copy(example("status")).m().apply { put("state", "sleeping") }, "state")
    }

    s.test("protocol: result.json and result_error.json round-trip through the typed result") {
        for (name in listOf("result", "result_error")) {
            val golden = example(name)
            val result = Result.fromJson(golden)
            val again = result.toJson()
            assertTrue(Json.equal(golden, again)) { "$name.json changed in the round trip:\n${Json.write(again)}" }
            assertTrue(Json.equal(golden, Json.parse(Json.write(again)))) { "$name.json changed through text" }
            schemas.validate("result", again)
        }
        assertEquals(false, Result.fromJson(example("result_error")).ok, "the error result is not ok")
    }

    s.test("protocol: request.json round-trips through the typed request") {
        val golden = example("request")
        val request = Request.fromJson(golden)
        assertEquals(3, request.components.size, "components")
        assertEquals(listOf("text_encoder", "transformer", "vae_decoder"), request.components.keys.toList(), "component order")
        assertEquals(listOf(1, 4, 8, 8), request.prompts[0].tensors.getValue("noise").shape, "noise shape")
        assertEquals("2.51.0.260929181845", request.qnnVersion, "qnn version")
        assertEquals(8, request.pipeline.steps, "steps")
        assertEquals(256, request.pipeline.timeProj.channels, "time_proj channels")
        assertTrue(Json.equal(golden, request.toJson())) { "request.json changed in the round trip:\n${Json.write(request.toJson())}" }
    }

    s.test("protocol: status messages follow the schema") {
        for (state in State.entries) schemas.validate("status", Status("abc", state, 1, 2, "m", 1795852800000L).toJson())
    }
}
