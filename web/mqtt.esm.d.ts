/**
 * Types for ./mqtt.esm.js, which the daemon serves from the `mqtt` package's
 * browser build (node_modules/mqtt/dist/mqtt.esm.js); the page is checked
 * against the package's own types.
 */
import mqtt from 'mqtt';
export default mqtt;
