// Starts Swagger UI on this server's OpenAPI document (a file, not inline: the CSP allows no inline script).
window.ui = SwaggerUIBundle({ url: "/api/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
