// Swagger UI over this server's own document; served from the package, no CDN.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#docs",
  deepLinking: true,
  // The job request's grammar is large: open schemas only on demand.
  defaultModelsExpandDepth: 0,
  defaultModelExpandDepth: 1,
});
