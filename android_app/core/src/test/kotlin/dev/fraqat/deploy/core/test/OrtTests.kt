package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.OrtBackend
import dev.fraqat.deploy.core.Request
import dev.fraqat.deploy.core.asObject
import dev.fraqat.deploy.host.HostSimulator
import java.io.File

// OrtBackend's sessions on the real QNN EP and context binaries are tested from Python (tests/test_kotlin_engine.py:
// they need the onnxruntime-qnn wheel's libraries); here, what needs no native library.
fun ortTests(s: Suite) {
    s.test("ort: provider options select the HTP and the request's performance mode; the host simulates the request's SoC") {
        val simulator = HostSimulator(File("qnn"), "host", "simulator", "simulated", null)
        val request = copy(example("request")).toMutableMap()
        @Suppress("UNCHECKED_CAST")
        val model = request["model"] as MutableMap<String, Any?>
        @Suppress("UNCHECKED_CAST")
        val config = request["config"] as MutableMap<String, Any?>
        config["performance_mode"] = "high_performance"
        model["soc_model"] = 57
        assertEquals(
            mapOf("backend_type" to "htp", "htp_performance_mode" to "high_performance", "soc_model" to "57"),
            OrtBackend(simulator).providerOptions(Request.fromJson(asObject(request, "request"))),
            "provider options",
        )
        model.remove("soc_model")
        config.remove("performance_mode")
        assertEquals(
            mapOf("backend_type" to "htp", "htp_performance_mode" to "burst", "soc_model" to "69"),
            OrtBackend(simulator).providerOptions(Request.fromJson(asObject(request, "request"))),
            "defaults (burst, SM8750)",
        )
    }

    s.test("ort: the host simulator reports its runtime and the QNN build of its libraries") {
        val dir = tempDir("qnn")
        File(dir, "libQnnSystem.so").writeBytes("\u0000QNN v2.51.0.260929181845 \u0000".toByteArray())
        val device = HostSimulator(dir, "samsung", "SM-S938B", "SM8750", 35).device("1.29.0")
        assertEquals("htp-simulator", device.runtime, "runtime")
        assertEquals("2.51.0.260929181845", device.qnnVersion, "qnn version")
        assertEquals("SM-S938B", device.model, "model")
    }
}
