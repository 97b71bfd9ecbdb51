import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["conformance.test.js"],
    testTimeout: 60000,
    hookTimeout: 60000,
  },
})
