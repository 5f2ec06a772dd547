package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.FloatTensor
import dev.fraqat.deploy.core.FlowScheduler
import dev.fraqat.deploy.core.Json
import dev.fraqat.deploy.core.TimeProj
import dev.fraqat.deploy.core.TorchNoise
import dev.fraqat.deploy.core.asObject
import dev.fraqat.deploy.core.summarize
import org.junit.jupiter.api.assertThrows

private fun Any?.obj() = asObject(this, "value")

fun numberTests(s: Suite) {
    s.test("stats: summarize reproduces stats.json") {
        for (case in example("stats")["cases"] as List<*>) {
            val values = doubles(case.obj()["values"])
            val want = case.obj()["summary"].obj()
            val got = summarize(values).toJson()
            assertEquals((want["n"] as Number).toInt(), got["n"], "n of $values")
            for (key in listOf("min", "p50", "p90", "max", "mean", "std")) {
                assertClose((want[key] as Number).toDouble(), got[key] as Double, 1e-12, "$key of $values")
            }
        }
        assertThrows<IllegalArgumentException>("no values") { summarize(emptyList()) }
    }

    s.test("scheduler: flow sigmas reproduce scheduler.json") {
        for (case in example("scheduler")["flow_sigmas"] as List<*>) {
            val c = case.obj()
            val steps = (c["steps"] as Number).toInt()
            val got = FlowScheduler.sigmas(steps, (c["shift"] as Number).toDouble()).map { it.toDouble() }
            assertAllClose(doubles(c["sigmas"]), got, 1e-7, "sigmas($steps, ${c["shift"]})")
        }
    }

    s.test("scheduler: timestep features reproduce scheduler.json") {
        val c = example("scheduler")["timestep_features"].obj()
        val proj = TimeProj.fromJson(c["time_proj"].obj())
        val t = doubles(c["timesteps"]).map { it.toFloat() }.toFloatArray()
        val got = FlowScheduler.timestepFeatures(t, proj)
        val want = (c["features"] as List<*>).flatMap { doubles(it) }
        assertEquals(listOf(t.size, proj.channels), got.shape.toList(), "shape")
        assertAllClose(want, got.data.map { it.toDouble() }, 2e-5, "features")
        // an odd channel count pads with a zero column, the flip puts cosines first
        val odd = FlowScheduler.timestepFeatures(floatArrayOf(0f), proj.copy(channels = 5))
        assertAllClose(listOf(1.0, 1.0, 0.0, 0.0, 0.0), odd.data.map { it.toDouble() }, 0.0, "odd channels at t=0")
    }

    s.test("scheduler: guidance and the Euler step reproduce scheduler.json") {
        val c = example("scheduler")["euler_cfg"].obj()
        val shape = (c["shape"] as List<*>).map { (it as Number).toInt() }.toIntArray()
        val x = FloatTensor(shape, doubles(c["x"]).map { it.toFloat() }.toFloatArray())
        val v = FloatTensor(shape.copyOf().also { it[0] *= 2 }, doubles(c["v"]).map { it.toFloat() }.toFloatArray())
        val guided = FlowScheduler.guided(v, (c["guidance"] as Number).toDouble())
        assertAllClose(doubles(c["guided"]), guided.data.map { it.toDouble() }, 1e-6, "guided")
        val next = FlowScheduler.eulerStep(x, guided, (c["sigma"] as Number).toFloat(), (c["sigma_next"] as Number).toFloat())
        assertAllClose(doubles(c["x_next"]), next.data.map { it.toDouble() }, 1e-6, "x_next")
        // guidance <= 1: the conditional half alone
        assertAllClose(v.data.drop(x.size).map { it.toDouble() }, FlowScheduler.guided(v, 1.0).data.map { it.toDouble() }, 0.0, "no guidance")
    }

    s.test("noise: TorchNoise reproduces torch.randn from noise.json") {
        for (case in example("noise")["cases"] as List<*>) {
            val c = case.obj()
            val shape = (c["shape"] as List<*>).map { (it as Number).toInt() }.toIntArray()
            val seed = (c["seed"] as Number).toLong()
            val got = TorchNoise.randn(shape, seed).data
            val what = "randn(${shape.toList()}, seed=$seed)"
            assertAllClose(doubles(c["head"]), got.take(8).map { it.toDouble() }, 1e-5, "$what head")
            assertAllClose(doubles(c["tail"]), got.takeLast(8).map { it.toDouble() }, 1e-5, "$what tail")
            assertClose((c["sum"] as Number).toDouble(), got.sumOf { it.toDouble() }, 1e-3, "$what sum")
        }
        assertEquals(Json.write(TorchNoise.randn(intArrayOf(16), 9).data), Json.write(TorchNoise.randn(intArrayOf(16), 9).data), "deterministic")
    }
}
