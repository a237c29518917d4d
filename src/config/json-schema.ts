import { z } from 'zod';
import { configSchema } from './schema.js';

/** JSON Schema of the config file, for editors that complete and check YAML. */
export function configJsonSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(configSchema, { io: 'input', target: 'draft-2020-12' }),
    title: 'edgemqtt configuration',
  };
}
