package dev.fraqat.deploy.core

import kotlin.math.cos
import kotlin.math.exp
import kotlin.math.ln
import kotlin.math.sin

/**
 * The Sana sampler's arithmetic, float32 operation for operation as `fraqat_deploy/device/pipeline.py` does it
 * (tested against `schemas/examples/scheduler.json`): shifted flow-matching sigmas, diffusers' sinusoidal timestep
 * features, classifier-free guidance and the Euler step.
 */
object FlowScheduler {
    /** `steps + 1` shifted sigmas from 1 down to 0. */
    fun sigmas(steps: Int, shift: Double): FloatArray {
        require(steps >= 1) { "steps must be >= 1, got $steps" }
        // numpy.linspace(1, 0, steps + 1, dtype=float32): computed in double, the last value set to the stop
        val step = -1.0 / steps
        val s = shift.toFloat()
        val s1 = (shift - 1.0).toFloat()
        return FloatArray(steps + 1) { i ->
            val t = if (i == steps) 0f else (i * step + 1.0).toFloat()
            s * t / (1f + s1 * t)
        }
    }

    /** diffusers' `get_timestep_embedding` for each of [timesteps]: [N, channels], row-major. */
    fun timestepFeatures(timesteps: FloatArray, proj: TimeProj): FloatTensor {
        val channels = proj.channels
        val half = channels / 2
        val logPeriod = (-ln(proj.maxPeriod)).toFloat()
        val divisor = (half - proj.downscaleFreqShift).toFloat()
        val freqs = FloatArray(half) { k -> exp((logPeriod * k.toFloat() / divisor).toDouble()).toFloat() }
        val scale = proj.scale.toFloat()
        val out = FloatArray(timesteps.size * channels)
        for (n in timesteps.indices) {
            val row = n * channels
            for (k in 0 until half) {
                val arg = scale * (timesteps[n] * freqs[k])
                val sinV = sin(arg.toDouble()).toFloat()
                val cosV = cos(arg.toDouble()).toFloat()
                if (proj.flipSinToCos) {
                    out[row + k] = cosV
                    out[row + half + k] = sinV
                } else {
                    out[row + k] = sinV
                    out[row + half + k] = cosV
                }
            }
            // an odd channel count leaves the last feature at zero (numpy.pad)
        }
        return FloatTensor(intArrayOf(timesteps.size, channels), out)
    }

    /** The guidance batch's velocity [2B, ...] (unconditional first) -> the guided velocity [B, ...]. */
    fun guided(v: FloatTensor, guidance: Double): FloatTensor {
        val batch = v.shape[0] / 2
        val uncond = v.rows(0, batch)
        val cond = v.rows(batch, 2 * batch)
        if (guidance <= 1.0) return cond
        val g = guidance.toFloat()
        val out = FloatArray(cond.size) { i -> uncond.data[i] + g * (cond.data[i] - uncond.data[i]) }
        return FloatTensor(cond.shape, out)
    }

    /** One Euler step of the flow ODE: `x + (sigmaNext - sigma) * v`. */
    fun eulerStep(x: FloatTensor, v: FloatTensor, sigma: Float, sigmaNext: Float): FloatTensor {
        require(x.size == v.size) { "latent ${x.describe()} and velocity ${v.describe()} differ" }
        val dt = sigmaNext - sigma
        return FloatTensor(x.shape, FloatArray(x.size) { i -> x.data[i] + dt * v.data[i] })
    }
}
