declare module 'cluster-key-slot' {
  /** The Redis Cluster slot of a key (its hash tag's, if it has one). */
  export default function calculateSlot (key: string): number
}
